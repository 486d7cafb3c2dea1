"""On 2 CUDA GPUs with FLA: `torchrun --nproc-per-node 2 padfree train --cuda-graph --sp-degree 2` trains what
`padfree train --cuda-graph` trains on one GPU, and resumes.

Skipped without 2 GPUs or flash-linear-attention. The embedded tiny Qwen3.5 (random weights) on the bundled chat
data, bf16-mixed (fp32 weights, bf16 autocast), two rows per optimizer step, clipping, warmup + cosine schedule, as
tests/gpu/test_cuda_train_graph.py (which holds the one-GPU graphed run against the eager trainer). The sharded
run is the captured Ulysses step (padfree.cuda_graph): each rank runs the attention and Gated DeltaNet layers on
every token of half the heads and the MLPs on half the tokens, and the gradients are summed over the two ranks in
the graph. The two runs train the same rows with the same kernels on other shapes, in bf16: losses within 2e-3
relative, gradient norms within 1e-2, weights within 10% of the six steps' update over all tensors together (the
one-GPU test's bounds; tests/helpers.trained_weights_difference says why not per tensor). A row whose documents
leaked into each other, or a gradient summed twice or missing a rank's share, moves the loss or the norm by far
more. The sharded run's checkpoint-3 is resumed under torchrun and repeats its steps 4-6.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from padfree.cli import main
from padfree.ops._backend import fla_available
from padfree.train.metrics import read_metrics
from tests.helpers import assert_demo_runs_agree, close_per_step

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.device_count() >= 2 and fla_available()),
    reason="needs 2 CUDA GPUs and FLA",
)
ARGS = ["--max-tokens", "512", "--max-steps", "6", "--grad-accum", "2", "--save-every", "3", "--device", "cuda",
        "--cuda-graph"]  # fmt: skip


def _torchrun(*args: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "padfree.cli", "train", *args]  # fmt: skip
    # A first compile of FLA's and tilelang's kernels for the sharded shapes takes minutes on a fresh machine.
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, env=dict(os.environ))
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def test_sharded_cuda_graph_train_matches_one_gpu_and_resumes(tmp_path):
    cache = str(tmp_path / "cache")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(["train", *ARGS, "--cache-dir", cache, "--output-dir", str(single)]) == 0
    printed = _torchrun(*ARGS, "--sp-degree", "2", "--cache-dir", cache, "--output-dir", str(sharded))
    assert "2 processes = 1 data-parallel x 2 sequence-parallel" in printed
    assert "weights whole on each, gradients summed in the graph" in printed
    assert_demo_runs_agree(single, sharded, steps=6)  # tests/helpers.py: metrics per step, final weights
    s = read_metrics(sharded / "metrics.jsonl")
    assert all(r["tokens"] > 512 for r in s)  # two rows per step, each of several chat samples

    # Resume the sharded run from its step-3 checkpoint, under torchrun: steps 4-6 again (settings from the run).
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoint-6")
    _torchrun("--resume", str(resumed), "--cache-dir", cache)
    r = read_metrics(resumed / "metrics.jsonl")
    assert [x["step"] for x in r] == [1, 2, 3, 4, 5, 6]
    close_per_step([x["loss"] for x in r[3:]], [x["loss"] for x in s[3:]], 2e-3, "resumed loss")
    close_per_step([x["lr"] for x in r[3:]], [x["lr"] for x in s[3:]], 1e-6, "resumed lr")
