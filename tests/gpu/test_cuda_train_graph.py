"""On CUDA with FLA: `padfree train --cuda-graph` trains what `padfree train` trains, and resumes.

Skipped without CUDA or flash-linear-attention. The embedded tiny Qwen3.5 (random weights) on the
bundled chat data, bf16-mixed (fp32 weights, bf16 autocast), two rows per optimizer step, clipping,
warmup + cosine schedule. Both runs pad every row to --max-tokens (the eager one with --pad-multiple),
so the same kernels run on the same shapes and only bf16 rounding and the flash backward's atomics
differ: losses within 2e-3 relative, gradient norms within 1e-2, weights within 10% of the six steps'
update over all tensors together. Not per tensor: Adam scales the rounding noise of a near-zero gradient
up to a full step. Layer 0's A_log, whose gradient is tiny, differed by half its update with the eager run
padding to a multiple of 64 instead, and by 0.20-0.24 of it with these settings (an H200, then an H100,
twenty-first session; 0.007 over all tensors; tests/helpers.trained_weights_difference).
"""

from __future__ import annotations

import functools
import shutil

import pytest
import torch

from padfree.cli import main
from padfree.ops._backend import fla_available
from padfree.train.metrics import read_metrics
from tests.helpers import assert_demo_runs_agree, close_per_step

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fla_available()), reason="needs CUDA and FLA")
ARGS = ["--max-tokens", "512", "--max-steps", "6", "--grad-accum", "2", "--save-every", "3", "--device", "cuda"]


def test_train_with_cuda_graph_matches_eager_and_resumes(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    eager, graphed = tmp_path / "eager", tmp_path / "graphed"
    # The eager run with the graphed run's AdamW kernel (fused): the trainer's default foreach AdamW rounds
    # differently, and layer 0's GDN gate parameters, whose gradients nearly cancel, then drift apart by ~45% of
    # their update in six steps (measured on an H100; their gradients on one row are bit-identical:
    # benchmarks/gpu/diag_static_row_grads.py). Rows of one length in both runs (the graphed run pads to
    # --max-tokens): the same kernels on the same shapes.
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", functools.partial(adamw, fused=True))
    assert main(["train", *ARGS, "--pad-multiple", "512", "--cache-dir", cache, "--output-dir", str(eager)]) == 0
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    assert main(["train", *ARGS, "--cuda-graph", "--cache-dir", cache, "--output-dir", str(graphed)]) == 0
    assert_demo_runs_agree(eager, graphed, steps=6)  # tests/helpers.py: metrics per step, final weights
    g = read_metrics(graphed / "metrics.jsonl")
    assert len({r["lr"] for r in g}) > 2  # the schedule reached the graph, and it moved

    # Resume the graphed run from its step-3 checkpoint: steps 4-6 again, graphed (settings come from the run).
    resumed = tmp_path / "resumed"
    shutil.copytree(graphed, resumed)
    shutil.rmtree(resumed / "checkpoint-6")
    assert main(["train", "--resume", str(resumed), "--cache-dir", cache]) == 0
    r = read_metrics(resumed / "metrics.jsonl")
    assert [x["step"] for x in r] == [1, 2, 3, 4, 5, 6]
    close_per_step([x["loss"] for x in r[3:]], [x["loss"] for x in g[3:]], 2e-3, "resumed loss")
    close_per_step([x["lr"] for x in r[3:]], [x["lr"] for x in g[3:]], 1e-6, "resumed lr")
