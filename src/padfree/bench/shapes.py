"""Model shapes `padfree bench` trains: random weights, never downloaded.

    tiny   padfree.tiny's Qwen3.5 (hidden 64, 4 layers, vocab 256, 0.2M params): a CPU run in seconds
    0.8b   Qwen3.5-0.8B: hidden 1024, 24 layers (3 GDN : 1 attention), 16/16 GDN heads of dim 128,
           8 query / 2 KV attention heads of dim 256, vocab 248,320, tied embeddings
    4b     a ~4B shape: hidden 2560, 32 layers, 16 key / 32 value GDN heads
"""

from __future__ import annotations

from padfree.tiny import tiny_config

SHAPES = ("tiny", "0.8b", "4b")
# Weight std of the correctness gate's model. tiny: 0.2, as padfree.check (at 0.02 its token mixers
# barely move the logits and a leak between documents hides below the bound). The real shapes keep
# their 0.02: a leak already moves their logits by ~1.4 (measured at 0.8b on CPU; 4b not measured),
# while 0.2 makes the deep stack amplify rounding (0.8b fp32 error 3.7e-5 at 0.2 vs 5e-6 at 0.02).
GATE_INIT_STD = {"tiny": 0.2, "0.8b": 0.02, "4b": 0.02}

_QWEN3_5_0_8B = dict(
    vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
    num_attention_heads=8, num_key_value_heads=2, head_dim=256,
    linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, tie_word_embeddings=True, max_position_embeddings=262144,
)  # fmt: skip
_QWEN3_5_4B = dict(
    _QWEN3_5_0_8B, hidden_size=2560, intermediate_size=9216, num_hidden_layers=32,
    num_attention_heads=16, num_key_value_heads=4, linear_num_value_heads=32,
)  # fmt: skip


def shape_config(name: str, **overrides):
    """The `Qwen3_5TextConfig` of shape `name` (one of SHAPES), with `overrides` applied."""
    from transformers import Qwen3_5TextConfig

    if name == "tiny":
        return tiny_config("qwen3_5", **overrides)
    if name == "0.8b":
        return Qwen3_5TextConfig(**_QWEN3_5_0_8B, **overrides)
    if name == "4b":
        return Qwen3_5TextConfig(**_QWEN3_5_4B, **overrides)
    raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}.")
