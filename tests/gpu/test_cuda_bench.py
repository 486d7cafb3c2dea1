"""On CUDA: `padfree bench` on the tiny shape, with its random weights drawn on the GPU, and its GPU-busy share.

Skipped without CUDA. The bench draws every path's weights on the device (one seed, so the same weights
for every path) and, for packed paths, profiles one more step to report the share of the step the GPU
was busy. Neither had run on a GPU when this test was written.
"""

from __future__ import annotations

import json

import pytest
import torch

from padfree.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_tiny_cuda_bench_gates_times_and_reports_gpu_busy(tmp_path):
    out_file = tmp_path / "bench.json"
    args = ["bench", "--shape", "tiny", "--device", "cuda", "--steps", "2", "--warmup", "1", "--row-tokens", "2048",
            "--paths", "upstream_padded,padfree,padfree_eager_norms", "--json", str(out_file)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out_file.read_text())
    assert report["gate"]["passed"] and len(report["gate"]["lengths"]) >= 2
    results = {r["path"]: r for r in report["results"]}
    for path in ("padfree", "padfree_eager_norms"):
        # kernel time of one step over the mean step: a share of it, with room for one step's variation
        assert 0.0 < results[path]["gpu_busy"] < 1.5, results[path]
    assert results["upstream_padded"]["gpu_busy"] is None  # padded batches differ in shape: not measured


def test_paths_get_the_same_weights_drawn_on_the_gpu():
    """Same seed, same device: every path's model starts from the same weights (what the ratios rely on)."""
    from padfree.bench.shapes import shape_config
    from padfree.bench.train_step import build_model

    config = shape_config("tiny")
    first, second = (build_model(config, 0, torch.device("cuda"), torch.bfloat16, False, None) for _ in range(2))
    assert all(p.is_cuda for p in first.parameters())
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
