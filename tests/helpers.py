"""Shared test helpers: the one tolerance check every comparison in the suite uses, and a small bench run."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def rms_relative_error(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """||actual - reference||_rms / ||reference||_rms, in fp64 (0 when both are exactly zero)."""
    reference = reference.detach().double()
    actual = actual.detach().double()
    if reference.shape != actual.shape:
        raise AssertionError(f"shape mismatch: reference {tuple(reference.shape)} vs actual {tuple(actual.shape)}")
    diff = (actual - reference).pow(2).mean().sqrt().item()
    scale = reference.pow(2).mean().sqrt().item()
    if scale == 0.0:
        return diff
    return diff / scale


def assert_close(name: str, reference: torch.Tensor, actual: torch.Tensor, bound: float, why: str = "") -> None:
    """Assert the RMS-relative error of `actual` against `reference` is at most `bound`.

    `name` says which tensor is compared (e.g. "dq"), `why` where the bound comes from, so a
    failure explains itself.
    """
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: actual holds NaN/inf (uninitialised memory read?)")
    err = rms_relative_error(reference, actual)
    if not err <= bound:
        raise AssertionError(f"{name}: RMS-relative error {err:.3e} > bound {bound:.1e}. {why}".rstrip())


def tiny_bench_report(tmp_path: Path, paths: str) -> tuple[dict, dict]:
    """`padfree bench` on the tiny CPU shape (1 warm-up and 1 timed 256-token row) for the comma list
    `paths`; returns (the JSON report, its results by path) after checking the gate covered every
    padfree path and passed."""
    from padfree.cli import main

    out_file = tmp_path / "bench.json"
    args = ["bench", "--shape", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--row-tokens", "256",
            "--median-len", "48", "--paths", paths, "--json", str(out_file)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out_file.read_text())
    assert set(report["gate"]["errors"]) == {p for p in paths.split(",") if p.startswith("padfree")}
    assert report["gate"]["passed"] and max(report["gate"]["errors"].values()) <= report["gate"]["bound"]
    return report, {r["path"]: r for r in report["results"]}


def trained_weights_difference(start: dict, reference: dict, other: dict) -> tuple[float, list[tuple[str, float]]]:
    """How far two training runs from the same `start` weights ended apart, relative to what they trained:
    ||other - reference|| / ||reference - start|| over all tensors together, and per tensor (largest first).

    Why all together: AdamW divides each entry's update by its own gradient's running RMS, so where a gradient is
    near zero (in the tiny models, layer 0's GDN gate: A_log, dt_bias, in_proj_a) bf16 rounding noise becomes a
    whole update, and that tensor alone can differ by its full update between two correct bf16 runs: the captured
    trainer at sp=2 against one GPU (tests/gpu/test_cuda_train_sp_graph.py, H100) differed by 1.09 of the update
    for A_log, 0.14 for in_proj_a, and 0.022 over all tensors (docs/benchmarks.md, twenty-first session). The
    tensors whose gradients carry signal set the total."""
    diff2 = update2 = 0.0
    per_tensor = []
    for name, w in reference.items():
        update = (w.double() - start[name].double()).norm().item()
        diff = (other[name].double() - w.double()).norm().item()
        diff2, update2 = diff2 + diff**2, update2 + update**2
        per_tensor.append((name, diff / max(update, 1e-12)))
    return (diff2**0.5) / max(update2**0.5, 1e-12), sorted(per_tensor, key=lambda kv: -kv[1])


def close_per_step(other: list[float], reference: list[float], rel: float, what: str) -> None:
    """Each step's value of a training run within `rel` (relative) of the reference run's."""
    for step, (o, r) in enumerate(zip(other, reference), start=1):
        assert abs(o - r) <= rel * abs(r), f"step {step}: {what} {o:.6f} vs {r:.6f} (reference)"


def assert_demo_runs_agree(reference: Path, other: Path, steps: int) -> None:
    """Two bf16 `padfree train` runs of the embedded tiny model (output dirs) over the same rows trained alike: the
    same trained tokens per step, losses within 2e-3, gradient norms within 1e-2, learning rates within 1e-6, and
    the final checkpoints within 10% of the update over all tensors (`trained_weights_difference` says why not per
    tensor). A row whose documents leak into each other, or a gradient summed twice or missing a share, moves a
    loss or a norm by far more."""
    from safetensors.torch import load_file

    from padfree.train.config import TrainConfig
    from padfree.train.metrics import read_metrics
    from padfree.train.model import build_demo_model, load_tokenizer

    r, o = read_metrics(reference / "metrics.jsonl"), read_metrics(other / "metrics.jsonl")
    assert [x["step"] for x in o] == list(range(1, steps + 1))
    assert [x["trained_tokens"] for x in o] == [x["trained_tokens"] for x in r]  # the same rows
    close_per_step([x["loss"] for x in o], [x["loss"] for x in r], 2e-3, "loss")
    close_per_step([x["grad_norm"] for x in o], [x["grad_norm"] for x in r], 1e-2, "grad norm")
    close_per_step([x["lr"] for x in o], [x["lr"] for x in r], 1e-6, "lr")
    start = build_demo_model(load_tokenizer(TrainConfig()), seed=0).state_dict()  # the runs' initial weights
    last = f"checkpoint-{steps}/model.safetensors"
    r_w, o_w = load_file(reference / last), load_file(other / last)
    assert set(o_w) == set(r_w) and set(r_w) <= set(start)
    total, per_tensor = trained_weights_difference(start, r_w, o_w)
    assert total <= 0.1, f"weights differ by {total:.3f} of the update; worst tensors: {per_tensor[:8]}"
    print(f"weights: {total:.4f} of the update over all tensors; worst tensors: {per_tensor[:4]}")
