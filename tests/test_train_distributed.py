"""`padfree train` under torchrun on CPU (gloo, FSDP2): two processes as data parallelism (dp=2) and as
sequence parallelism (sp=2), eight as dp=2 x sp=4, each against the single-process run over the same
rows; exact resume; a bad --sp-degree, and --cuda-graph with data parallelism, refused before anything is
written.

Scenarios share one reference: a single process with --grad-accum 2 trains rows (0, 1) at step 1,
(2, 3) at step 2, ... A dp=2 run with --grad-accum 1 gives dp rank r row 2s + r, and an sp=2 run with
--grad-accum 2 gives both ranks rows (2s, 2s + 1), half of each row's tokens apiece. With the loss
normalised by the step's global trained-token count and gradients summed over ranks, all three
runs compute the same step; only the order of fp32 sums differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from padfree.cli import main
from padfree.corpus import bundled_path
from padfree.train import TrainConfig
from padfree.train import checkpoint as ckpt
from padfree.train.data import load_training_data
from padfree.train.metrics import read_metrics
from padfree.train.model import load_tokenizer
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")

STEPS = 3
ROWS = ["--max-tokens", "256", "--max-steps", str(STEPS), "--save-every", "2"]
# fp32 on CPU: the same sums in another order (per-rank partial sums, FSDP's reduce-scatter).
CURVE_BOUND = 1e-4
WHY = "fp32: the distributed run sums the same terms in another order; a wrong normalisation is off by >1e-2"


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free rendezvous port) of `padfree train`, 1 thread per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "padfree.cli", "train", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout


def curve(records: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([r[key] for r in records], dtype=torch.float64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, cache_dir):
    """One process, --grad-accum 2: the reference every distributed run must reproduce."""
    out = tmp_path_factory.mktemp("single")
    assert main(["train", *ROWS, "--grad-accum", "2", "--cache-dir", cache_dir, "--output-dir", str(out)]) == 0
    return read_metrics(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, cache_dir, single_run):
    out = tmp_path_factory.mktemp("dp2") / "run"
    printed = check(torchrun(*ROWS, "--grad-accum", "1", "--cache-dir", cache_dir, "--output-dir", str(out)))
    return out, printed


def test_data_parallel_trains_writes_once_and_loads(dp_run):
    out, printed = dp_run
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # rank 0 alone logs
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert printed.count(f"done: {STEPS} steps") == 1 and "2 data-parallel x 1 sequence-parallel" in printed
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, STEPS]
    model, info = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{STEPS}", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # full weights, not one rank's shard
    assert json.loads((out / f"checkpoint-{STEPS}/config.json").read_text())["architectures"] == ["Qwen3_5ForCausalLM"]


def test_data_parallel_equals_one_process_over_the_same_rows(dp_run, single_run, cache_dir):
    records = read_metrics(dp_run[0] / "metrics.jsonl")
    assert [r["tokens"] for r in records] == [r["tokens"] for r in single_run]  # real tokens of the whole world
    assert [r["trained_tokens"] for r in records] == [r["trained_tokens"] for r in single_run]
    assert_close("loss", curve(single_run, "loss"), curve(records, "loss"), CURVE_BOUND, WHY)
    # Averaged (not summed) gradients would halve the norm; the clipping at 1.0 then changes the steps too.
    assert_close("grad_norm", curve(single_run, "grad_norm"), curve(records, "grad_norm"), CURVE_BOUND, WHY)
    # Not vacuous: the two ranks' rows have different trained-token counts, so per-rank means differ.
    tokenizer = load_tokenizer(TrainConfig())
    stream = load_training_data(bundled_path("chat_sample.jsonl"), "train", tokenizer, cache_dir, 256, "truncate", 0)
    counts = [sum(sum(t != -100 for t in s["labels"][1:]) for s in stream.stream.row(p)) for p in range(2 * STEPS)]
    assert any(counts[2 * s] != counts[2 * s + 1] for s in range(STEPS)), counts


def test_data_parallel_resume_is_exact(dp_run, cache_dir):
    out, _ = dp_run
    before = read_metrics(out / "metrics.jsonl")
    weights = load_file(out / f"checkpoint-{STEPS}/model.safetensors")
    check(torchrun("--resume", str(out / "checkpoint-2"), "--cache-dir", cache_dir))  # recomputes step 3
    after = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))
    assert [(r["loss"], r["grad_norm"]) for r in after] == [(r["loss"], r["grad_norm"]) for r in before]
    resumed = load_file(out / f"checkpoint-{STEPS}/model.safetensors")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_sequence_parallel_equals_one_process(tmp_path, cache_dir, single_run):
    out = tmp_path / "run"
    printed = check(torchrun(*ROWS, "--grad-accum", "2", "--sp-degree", "2", "--cache-dir", cache_dir,
                             "--output-dir", str(out)))  # fmt: skip
    assert "1 data-parallel x 2 sequence-parallel" in printed
    records = read_metrics(out / "metrics.jsonl")
    assert [r["tokens"] for r in records] == [r["tokens"] for r in single_run]
    assert_close("loss", curve(single_run, "loss"), curve(records, "loss"), CURVE_BOUND, WHY)
    assert_close("grad_norm", curve(single_run, "grad_norm"), curve(records, "grad_norm"), CURVE_BOUND, WHY)
    AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{STEPS}")


def test_data_and_sequence_parallel_mix_equals_one_process(tmp_path, cache_dir, single_run):
    """dp=2 x sp=4 (8 processes, FSDP2 over the flattened mesh): dp rank r takes row 2s + r and its four
    sp ranks split it, so every step still trains rows (2s, 2s + 1) like the one-process run."""
    out = tmp_path / "run"
    printed = check(torchrun(*ROWS, "--grad-accum", "1", "--sp-degree", "4", "--cache-dir", cache_dir,
                             "--output-dir", str(out), nproc=8))  # fmt: skip
    assert "8 processes = 2 data-parallel x 4 sequence-parallel (auto)" in printed
    records = read_metrics(out / "metrics.jsonl")
    assert [r["tokens"] for r in records] == [r["tokens"] for r in single_run]
    assert_close("loss", curve(single_run, "loss"), curve(records, "loss"), CURVE_BOUND, WHY)
    assert_close("grad_norm", curve(single_run, "grad_norm"), curve(records, "grad_norm"), CURVE_BOUND, WHY)


def test_bad_sp_degree_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    result = torchrun("--sp-degree", "3", "--max-steps", "1", "--output-dir", str(out))
    assert result.returncode != 0
    assert "--sp-degree 3 must divide the number of processes, but this run has 2" in result.stderr
    assert not out.exists()
    assert main(["train", "--sp-degree", "2", "--output-dir", str(out)]) == 2  # one process, no torchrun
    assert "launch it with torchrun" in capsys.readouterr().err and not out.exists()


def test_cuda_graph_with_data_parallelism_fails_before_writing(tmp_path):
    """The captured step covers one process or one sequence-parallel group: two processes without --sp-degree are
    data parallelism, refused with the fix before any process group, device check or file."""
    out = tmp_path / "run"
    result = torchrun("--cuda-graph", "--max-steps", "1", "--output-dir", str(out))
    assert result.returncode != 0
    assert "--cuda-graph covers one process, or one sequence-parallel group" in result.stderr
    assert "pass --sp-degree 2, or drop --cuda-graph" in result.stderr
    assert not out.exists()


def test_cuda_graph_with_context_parallel_layers_fails_before_writing(tmp_path):
    """At sp=3 the tiny model's 4 attention and 4 GDN value heads leave --sp-mode auto no Ulysses split, so its layers
    run context parallelism, which a CUDA graph cannot replay: refused with the fix before any file is written."""
    out = tmp_path / "run"
    result = torchrun("--cuda-graph", "--sp-degree", "3", "--max-steps", "1", "--output-dir", str(out), nproc=3)
    assert result.returncode != 0
    assert "--sp-mode auto runs the attention and gdn layers with context parallelism" in result.stderr
    assert "pass an --sp-degree that divides the model's heads (Ulysses), or drop --cuda-graph" in result.stderr
    assert not out.exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_like_one_process(tmp_path, cache_dir, single_run):
    """Two torchrun launchers (--nnodes 2, one process each) meeting at a c10d rendezvous: the command
    users run on two machines. Sequence parallelism of degree 2 spans the two "nodes"."""
    out = tmp_path / "run"
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launches = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
             "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
             "--rdzv-id", "padfree-test", "-m", "padfree.cli", "train", *ROWS, "--grad-accum", "2",
             "--sp-degree", "2", "--cache-dir", cache_dir, "--output-dir", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=240) for p in launches]
    for p, (stdout, stderr) in zip(launches, outputs):
        assert p.returncode == 0, f"node failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    assert "1 data-parallel x 2 sequence-parallel" in outputs[0][0] + outputs[1][0]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert_close("loss", curve(single_run, "loss"), curve(records, "loss"), CURVE_BOUND, WHY)
