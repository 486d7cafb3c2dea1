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
