"""Tiny Qwen3.5-family models with random weights, for tests, `padfree check` and CPU demos.

The configs keep every structural feature of the real models at toy size: Gated DeltaNet layers
with grouped value heads (4 value heads per 2 key heads), gated attention with grouped KV heads and
partial rotary embeddings, and (for the MoE families) routed plus shared experts. Models are saved
with `save_pretrained` and loaded back with `from_pretrained`, the path real checkpoints take.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import transformers

FAMILIES = ("qwen3_5", "qwen3_5_moe", "qwen3_next")

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_MOE = dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


def tiny_config(family: str = "qwen3_5", **overrides) -> transformers.PretrainedConfig:
    """A small config of `family` ("qwen3_5", "qwen3_5_moe" or "qwen3_next")."""
    if family == "qwen3_5":
        from transformers import Qwen3_5TextConfig as config_class

        fields = dict(_COMMON, intermediate_size=128)
    elif family == "qwen3_5_moe":
        from transformers import Qwen3_5MoeTextConfig as config_class

        fields = dict(_COMMON, **_MOE)
    elif family == "qwen3_next":
        from transformers import Qwen3NextConfig as config_class

        fields = dict(_COMMON, intermediate_size=128, **_MOE)
    else:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {FAMILIES}.")
    fields.update(overrides)
    return config_class(**fields)


def causal_lm_class(family: str):
    return {
        "qwen3_5": transformers.Qwen3_5ForCausalLM,
        "qwen3_5_moe": transformers.Qwen3_5MoeForCausalLM,
        "qwen3_next": transformers.Qwen3NextForCausalLM,
    }[family]


def _realistic_gates(model: torch.nn.Module) -> None:
    """Give every Gated DeltaNet layer the time-step init of the GDN/Mamba papers.

    transformers initialises dt_bias to 1, so g = -A * softplus(a + 1) is about -10 and exp(g) about
    1e-4: the state forgets everything at each token. Then a document leaking into the next one is
    invisible, and gradients through the gate are smaller than fp32 rounding. Trained checkpoints
    keep state across many tokens; dt ~ U_log[1e-3, 1e-1] (dt_bias = softplus^-1(dt)) does too.
    """
    for module in model.modules():
        if hasattr(module, "dt_bias") and hasattr(module, "A_log"):
            dt = torch.exp(torch.empty_like(module.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
            with torch.no_grad():
                module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def save_tiny_model(family: str, folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Build a randomly initialised tiny model of `family` and `save_pretrained` it into `folder`."""
    torch.manual_seed(seed)
    model = causal_lm_class(family)(tiny_config(family, **overrides))
    _realistic_gates(model)
    model.save_pretrained(folder)
    return Path(folder)


def load_tiny_model(family: str, folder: str | Path, seed: int = 0, **overrides) -> torch.nn.Module:
    """Save a tiny model into `folder` and load it back with `from_pretrained` (fp32, eval mode)."""
    save_tiny_model(family, folder, seed=seed, **overrides)
    model = causal_lm_class(family).from_pretrained(folder, dtype=torch.float32)
    return model.eval()
