"""Activation checkpointing, full and selective (padfree.checkpointing), on a packed row of a patched
tiny model: the gradients equal the run without checkpointing, and the selective policy really
keeps the matmul outputs (the backward pass runs no forward matmul again)."""

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


def gradients_and_backward_matmuls(family: str, folder, mode: str | None) -> tuple[dict, int]:
    model = load_tiny_model(family, folder).train()
    padfree.patch(model, backend="torch")
    if mode is not None:
        enable_checkpointing(model, mode)
    loss = model(**packed_row()).loss
    with CountMatmuls() as counter:
        loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads, counter.count


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
def test_selective_and_full_checkpointing_give_the_gradients_of_no_checkpointing(family, tmp_path):
    plain, plain_matmuls = gradients_and_backward_matmuls(family, tmp_path / "model", None)
    full, full_matmuls = gradients_and_backward_matmuls(family, tmp_path / "model", "full")
    selective, selective_matmuls = gradients_and_backward_matmuls(family, tmp_path / "model", "selective")
    assert plain.keys() == full.keys() == selective.keys() and len(plain) > 10
    for name, reference in plain.items():
        # fp32 on CPU: the re-run repeats the same ops on the same inputs, so only summation order may differ
        torch.testing.assert_close(full[name], reference, rtol=1e-5, atol=1e-7, msg=f"full: {name}")
        torch.testing.assert_close(selective[name], reference, rtol=1e-5, atol=1e-7, msg=f"selective: {name}")
    # Full checkpointing re-runs every layer's projections in the backward pass; selective keeps their
    # outputs, so its backward runs exactly the matmuls of the backward without checkpointing.
    assert full_matmuls > plain_matmuls
    assert selective_matmuls == plain_matmuls


def test_unknown_checkpointing_mode_is_refused_before_anything_changes(tmp_path):
    model = load_tiny_model("qwen3_5", tmp_path / "model")
    with pytest.raises(ValueError, match="choose one of full, selective"):
        enable_checkpointing(model, "some")
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_selective_checkpointing_refuses_compiled_modules(tmp_path):
    model = load_tiny_model("qwen3_5", tmp_path / "model").train()
    padfree.patch(model, backend="torch", compile_elementwise=True)  # compiles lazily: nothing runs here
    with pytest.raises(ValueError, match="does not combine with padfree.patch\\(compile_elementwise=True\\)"):
        enable_checkpointing(model, "selective")
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    enable_checkpointing(model, "full")  # full checkpointing re-runs the compiled modules as compiled: allowed
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_train_refuses_selective_checkpointing_with_compiled_modules_before_loading(tmp_path, capsys):
    from padfree.cli import main

    out = tmp_path / "run"
    assert main(["train", "--selective-checkpointing", "--compile-elementwise", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--selective-checkpointing does not combine with --compile-elementwise" in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written
