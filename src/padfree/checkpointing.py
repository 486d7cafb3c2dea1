"""Activation checkpointing of the decoder layers, shared by `padfree train` and `padfree bench`.

transformers' own checkpointing, non-reentrant: each decoder layer keeps only its input and is run
again in the backward pass. Non-reentrant, because it re-runs the layer with the same keyword
arguments (padfree's packed-row metadata included) and needs no input that requires grad (LoRA
freezes the embeddings). On the 0.8B shape at 8,192 tokens it cost padfree 23% tokens/s for 3.6x
less peak memory (one H100, docs/benchmarks.md, sixth session).

Tried and removed: selective (op-level) checkpointing, which kept the matmul and attention outputs
through torch's `create_selective_checkpoint_contexts`. On one H200 (0.8B shape, 8,192-token rows)
it ran at 0.76x full checkpointing's tokens/s with 1.8x its peak memory (docs/benchmarks.md, seventh
session): its dispatch mode adds host time to every op of a step that is already partly host-bound.
"""

from __future__ import annotations

import torch


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Checkpoint every decoder layer of `model` (a transformers model), non-reentrant."""
    kwargs = {"use_reentrant": False}
    # transformers 5.x renamed gradient_checkpointing_enable (kept, deprecated) to activation_checkpointing_enable.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
