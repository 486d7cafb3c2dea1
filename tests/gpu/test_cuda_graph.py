"""On CUDA with FLA: the training step captured in a CUDA graph (padfree.cuda_graph) against the eager step.

Skipped without CUDA or flash-linear-attention. Three claims:
- The fixed-shape row (padded offsets with empty documents at the end, FLA's chunk table, offsets the
  ops trust) gives the logits of each document run alone by the unpatched model, as closely as the
  ordinary packed row does (within 1.5x its error + 1e-3: both are bf16 runs of the same kernels).
- Replaying the captured step on rows of other layouts trains exactly what the eager step trains:
  the same loss at every step and the same weights after five optimizer steps. Also with
  checkpointing, and as `padfree train` runs it: fp32 weights under bf16 autocast, two rows
  accumulated per step, gradient clipping, and a schedule on a tensor learning rate. Rows differ in document count
  and layout, so a replay that kept the capture row's offsets would differ; a control computes the
  eager loss of a 21-document row under a one-document layout to show that such a difference is
  above the bound (more than 3x: a random tiny model's mean loss moves little with its context,
  1.1e-2 measured on an H100; the weights comparison is a second check).
- Changing a float learning rate after capture is refused.
"""

from __future__ import annotations

import pytest
import torch

import padfree
from padfree.check import packed_vs_per_document
from padfree.cuda_graph import CudaGraphTrainStep
from padfree.ops._backend import fla_available
from padfree.tiny import load_tiny_model

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fla_available()), reason="needs CUDA and FLA")
DEVICE = torch.device("cuda")
ROW = 512
# several documents per row, none alike; the first row is the one the graph is captured on
LAYOUTS = ([100, 37, 200, 90], [64, 64, 65, 1, 200, 50], [300, 100, 20], [5] * 20 + [200], [511])
MAX_DOCS = 24
INIT_STD = 0.2  # large random weights: the logits depend strongly on context, so a leak shows (as the bench gate)


# GDN head dims: the tiny model's 16 (FLA's own kernels) and the family's 128, where FLA hands the gated delta rule to
# FlashQLA when the flash_qla package is installed (a fixed-shape row's call through padfree's device-side plan)
GDN_HEAD_DIMS = [16, 128]


def _model(tmp_path, gdn_head_dim: int = 16):
    return load_tiny_model("qwen3_5", tmp_path, initializer_range=INIT_STD, linear_key_head_dim=gdn_head_dim,
                           linear_value_head_dim=gdn_head_dim).to(DEVICE, torch.bfloat16)  # fmt: skip


def _fixed_shape_flash_qla_calls(monkeypatch, gdn_head_dim: int) -> list | None:
    """The fixed-shape (auto_cp=False) calls that reach FlashQLA, recorded; None where none should: flash_qla not
    installed, or head dims it does not take."""
    try:
        import flash_qla
    except ImportError:
        return None
    if gdn_head_dim != 128:
        return None
    monkeypatch.setenv("FLA_FLASH_QLA", "1")
    calls, original = [], flash_qla.chunk_gated_delta_rule

    def spy(*args, **kwargs):
        if kwargs.get("auto_cp") is False:
            calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(flash_qla, "chunk_gated_delta_rule", spy)
    return calls


def _rows(vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [padfree.collate([{"input_ids": torch.randint(3, vocab, (n,), generator=gen)} for n in layout], pad_to=ROW)
            for layout in LAYOUTS]  # fmt: skip


@pytest.mark.parametrize("gdn_head_dim", GDN_HEAD_DIMS)
def test_fixed_shape_row_matches_per_document_runs(tmp_path, monkeypatch, gdn_head_dim):
    model = _model(tmp_path, gdn_head_dim)
    flash_qla_calls = _fixed_shape_flash_qla_calls(monkeypatch, gdn_head_dim)
    lengths = [70, 1, 17, 3, 130, 40]
    eager = packed_vs_per_document(model, lengths, DEVICE)
    static = packed_vs_per_document(model, lengths, DEVICE, static_max_docs=len(lengths) + 5)
    assert len(static) == len(lengths) > 1
    assert flash_qla_calls is None or flash_qla_calls  # the fixed-shape row ran FlashQLA's kernels
    for doc, (e, s) in enumerate(zip(eager, static)):
        assert s <= 1.5 * e + 1e-3, f"document {doc}: fixed-shape row error {s:.2e} vs ordinary packed row {e:.2e}"


def _on_device(batch: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _eager_loss(model, batch, count=None, autocast=None) -> torch.Tensor:
    with torch.autocast("cuda", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        return model(**_on_device(batch), num_items_in_batch=count).loss


# (activation checkpointing, rows per optimizer step, weights dtype, autocast, clipping, GDN head dim): the bench's
# setting, the same with checkpointing, and `padfree train`'s (fp32 weights under bf16 autocast,
# accumulation over 2 rows, clipping, a learning-rate schedule on a tensor lr); the bench's setting again with the
# family's GDN head dims (FlashQLA's kernels in both steps when flash_qla is installed)
CASES = [(False, 1, torch.bfloat16, None, None, 16), (True, 1, torch.bfloat16, None, None, 16),
         (False, 2, torch.float32, torch.bfloat16, 0.5, 16), (False, 1, torch.bfloat16, None, None, 128)]  # fmt: skip


@pytest.mark.parametrize("checkpointing, accum, weights, autocast, clip, gdn_head_dim", CASES)
def test_replayed_steps_train_what_eager_steps_train(
    tmp_path, monkeypatch, checkpointing, accum, weights, autocast, clip, gdn_head_dim
):  # fmt: skip
    from padfree.checkpointing import enable_checkpointing
    from padfree.loss import count_trained_tokens

    # two loads of one saved model: the same weights (a deepcopy would share the patched forwards' closures)
    eager = padfree.patch(_model(tmp_path / "eager", gdn_head_dim).to(weights).train())
    graphed = padfree.patch(_model(tmp_path / "graphed", gdn_head_dim).to(weights).train())
    flash_qla_calls = _fixed_shape_flash_qla_calls(monkeypatch, gdn_head_dim)
    assert all(torch.equal(a, b) for a, b in zip(eager.parameters(), graphed.parameters()))
    if checkpointing:
        enable_checkpointing(eager), enable_checkpointing(graphed)
    start = [p.detach().clone() for p in eager.parameters()]
    rows = _rows(eager.config.vocab_size) * accum  # as many optimizer steps for every case
    assert all(len(r["cu_seq_lens_q"]) > 2 for r in rows[:4])  # several documents (plus the padding one)

    def optimizer_and_schedule(model):
        lr = torch.tensor(1e-3, device=DEVICE)  # a tensor: the schedule updates it in place, inside the graph too
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True, capturable=True)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))

    opt_eager, sched_eager = optimizer_and_schedule(eager)
    opt_graphed, sched_graphed = optimizer_and_schedule(graphed)
    step = CudaGraphTrainStep(graphed, opt_graphed, ROW, MAX_DOCS, eager_steps=1, autocast_dtype=autocast,
                              max_grad_norm=clip)  # fmt: skip
    losses, norms = [], []
    for first in range(0, len(rows), accum):
        group = rows[first : first + accum]
        count = sum(int(count_trained_tokens(r["labels"])) for r in group)
        eager_loss = sum(_eager_loss(eager, r, count, autocast).float() for r in group)
        eager_loss.backward()
        eager_norm = torch.nn.utils.clip_grad_norm_(eager.parameters(), clip) if clip else None
        opt_eager.step(), sched_eager.step()
        opt_eager.zero_grad(set_to_none=True)
        graphed_loss = sum(step.accumulate(r, num_items_in_batch=count) for r in group)
        graphed_norm = step.update()
        sched_graphed.step()
        losses.append((eager_loss.item(), graphed_loss.item()))
        if clip:
            norms.append((eager_norm.item(), graphed_norm.item()))
    assert step.captured and step.updates == len(LAYOUTS)  # steps 2.. ran as replays
    assert flash_qla_calls is None or flash_qla_calls  # the captured step ran FlashQLA's kernels
    with torch.no_grad():  # control: row 4 (21 documents) under row 5's layout (one), as a stale replay would see it
        wrong = dict(rows[3], cu_seq_lens_q=rows[4]["cu_seq_lens_q"], cu_seq_lens_k=rows[4]["cu_seq_lens_k"],
                     position_ids=rows[4]["position_ids"])  # fmt: skip
        right = _eager_loss(eager, rows[3], autocast=autocast).item()
        stale_gap = abs(_eager_loss(eager, wrong, autocast=autocast).item() - right) / right
    for i, (e, g) in enumerate(losses):
        assert abs(g - e) <= 2e-3 * abs(e), f"step {i}: graphed loss {g:.5f} vs eager {e:.5f}"
    assert stale_gap > 3 * 2e-3, f"the control's wrong layout moved the loss by only {stale_gap:.1e}"
    for i, (e, g) in enumerate(norms):  # clipping had work to do: the norms exceed the bound
        assert e > clip and abs(g - e) <= 1e-2 * e, f"step {i}: graphed grad norm {g:.4f} vs eager {e:.4f}"
    for (name, p_e), p_g, p_0 in zip(eager.named_parameters(), graphed.parameters(), start):
        update = (p_e.float() - p_0.float()).norm()
        assert (p_g.float() - p_e.float()).norm() <= 0.05 * update + 1e-6, f"{name}: graphed weights differ"


def test_changing_a_float_learning_rate_after_capture_is_refused(tmp_path):
    model = padfree.patch(_model(tmp_path).train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True, capturable=True)
    step = CudaGraphTrainStep(model, optimizer, ROW, MAX_DOCS, eager_steps=1)
    rows = _rows(model.config.vocab_size)
    step(rows[0]), step(rows[1])  # eager, then captured
    optimizer.param_groups[0]["lr"] = 5e-4
    with pytest.raises(ValueError, match="learning rate changed"):
        step(rows[2])
