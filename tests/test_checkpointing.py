"""Activation checkpointing (padfree.checkpointing) on a packed row of a patched tiny model: the
gradients equal the run without checkpointing, and the layers really are re-run in the backward pass
(so the equality is not that of two plain runs)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import padfree
from padfree.checkpointing import enable_checkpointing
from padfree.tiny import load_tiny_model


class CountMatmuls(TorchDispatchMode):
    """Counts the aten.mm / aten.addmm calls that reach the dispatcher while active."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) in ("aten.mm", "aten.addmm"):
            self.count += 1
        return func(*args, **(kwargs or {}))


def packed_row() -> dict:
    generator = torch.Generator().manual_seed(0)
    lengths = (37, 64, 23, 50)
    samples = [{"input_ids": torch.randint(3, 200, (n,), generator=generator).tolist()} for n in lengths]
    batch = padfree.collate(samples)
    assert batch["cu_seq_lens_q"].numel() - 1 == len(lengths)  # the row really holds several documents
    return batch


def gradients_and_backward_matmuls(family: str, folder, checkpointing: bool) -> tuple[dict, int]:
    model = load_tiny_model(family, folder).train()
    padfree.patch(model, backend="torch")
    if checkpointing:
        enable_checkpointing(model)
    loss = model(**packed_row()).loss
    with CountMatmuls() as counter:
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, counter.count


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
def test_checkpointing_gives_the_gradients_of_no_checkpointing(family, tmp_path):
    plain, plain_matmuls = gradients_and_backward_matmuls(family, tmp_path / "model", False)
    full, full_matmuls = gradients_and_backward_matmuls(family, tmp_path / "model", True)
    assert plain.keys() == full.keys() and len(plain) > 10
    for name, reference in plain.items():
        # fp32 on CPU: the re-run repeats the same ops on the same inputs, so only summation order may differ
        torch.testing.assert_close(full[name], reference, rtol=1e-5, atol=1e-7, msg=name)
    # Checkpointing re-runs every layer's projections in the backward pass.
    assert full_matmuls > plain_matmuls
