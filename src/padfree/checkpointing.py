"""Activation checkpointing of the decoder layers: full, or selective (the matmul outputs are kept).

Full: transformers' own checkpointing, non-reentrant. Each decoder layer keeps only its input and
is run again in the backward pass. Non-reentrant, because it re-runs the layer with the same
keyword arguments (padfree's packed-row metadata included) and needs no input that requires grad
(LoRA freezes the embeddings). On the 0.8B shape at 8,192 tokens it cost padfree 23% tokens/s for
3.6x less peak memory (one H100, docs/benchmarks.md, sixth session).

Selective: the same, plus a policy (torch's `create_selective_checkpoint_contexts`) that keeps the
outputs of the layer's matrix multiplies and attention, so the re-run skips them. Only the cheap
ops run again: norms, activations, gates, the short conv and the gated delta rule. FLA's kernels
are invisible to the policy (Triton launches inside an autograd.Function), so they always re-run;
so do other matmul forms (bmm inside the torch kernels, an MoE's grouped expert matmuls).
The kept outputs are the projections' activations, about 35 KB per token per layer on the 0.8B
shape (~7 GB at 8,192 tokens over 24 layers), between full checkpointing's memory and none.
The policy watches every op through a dispatch mode, which adds host time per op. Which way that
nets out on a GPU is measured by `padfree bench --paths padfree,padfree_selective`.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from padfree.models.compiled import COMPILED_MARK

MODES = ("full", "selective")

# Ops whose outputs selective checkpointing keeps, by name (an op this torch build lacks never shows up):
# the dense matmuls (nn.Linear lowers to mm or addmm) and the attention forwards torch may dispatch to.
KEPT_OPS = frozenset({
    "aten.mm", "aten.addmm",
    "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
    "aten._flash_attention_forward", "aten._efficient_attention_forward",
    "torch_attn._varlen_attn",
})  # fmt: skip


def _keep_matmuls_and_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    kept = str(getattr(op, "overloadpacket", op)) in KEPT_OPS
    return CheckpointPolicy.MUST_SAVE if kept else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_keep_matmuls_and_attention)


def enable_checkpointing(model: torch.nn.Module, mode: str = "full") -> None:
    """Checkpoint every decoder layer of `model` (a transformers model): `mode` "full" or "selective"."""
    if mode not in MODES:
        raise ValueError(f"checkpointing mode {mode!r}: choose one of {', '.join(MODES)}.")
    if mode == "selective" and any(module.__dict__.get(COMPILED_MARK) for module in model.modules()):
        # torch's selective checkpointing replays the forward op by op; a compiled module's recompute
        # goes through another graph, and the replay then fails on mismatched tensors mid-backward.
        raise ValueError("selective checkpointing does not combine with padfree.patch(compile_elementwise=True); "
                         "use full checkpointing, or patch without compile_elementwise.")  # fmt: skip
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        kwargs["context_fn"] = _selective_context
    # transformers 5.x renamed gradient_checkpointing_enable (kept, deprecated) to activation_checkpointing_enable.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
