"""`padfree bench` on CPU: all three paths run on the same samples after the correctness gate, and a
gate that sees documents leak into each other stops the bench before anything is timed."""

from __future__ import annotations

import json

import pytest
import torch

import padfree.models.layers
from padfree.bench.gate import correctness_gate
from padfree.bench.train_step import make_workload
from padfree.packing import pack
from padfree.bench.shapes import GATE_INIT_STD, shape_config
from padfree.check import BOUNDS, ROUNDING_MARGIN
from padfree.cli import main

# Rows of 256 tokens with median-48 samples: several documents per row (the gate needs boundaries)
# and enough spread in a padded batch of 4 to waste slots. About 3 s on 2 cores.
ARGS = ["bench", "--shape", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--row-tokens", "256",
        "--median-len", "48"]  # fmt: skip


def test_bench_runs_all_paths_on_cpu(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    assert main([*ARGS, "--json", str(out_file)]) == 0
    report = json.loads(out_file.read_text())
    results = {r["path"]: r for r in report["results"]}
    assert list(results) == ["upstream_padded", "upstream_packed", "padfree"]

    gate = report["gate"]
    assert gate["passed"] and gate["max_error"] <= gate["bound"] == 1e-4 and gate["rounding_error"] == 0.0
    assert len(gate["lengths"]) >= 2, "the gate row must hold a document boundary, or it proves nothing"

    padded, packed, ours = results["upstream_padded"], results["upstream_packed"], results["padfree"]
    assert padded["real_tokens_per_s"] > 0 and ours["real_tokens_per_s"] > 0
    # Every path times the same documents: equal real-token counts.
    assert padded["real_tokens"] == ours["real_tokens"] == report["samples"]["timed_real_tokens"]
    assert padded["packing_efficiency"] < ours["packing_efficiency"] <= 1.0
    assert ours["vs_upstream_padded"] == ours["real_tokens_per_s"] / padded["real_tokens_per_s"]
    # Upstream's packed path needs flash-linear-attention, absent on CPU: it refuses, and the gate saw the same.
    if "error" in packed:
        assert packed["error"].startswith("refused: ") and gate["upstream_packed"]["refused"]
    else:
        assert packed["real_tokens_per_s"] > 0 and gate["upstream_packed"]["max_error"] is not None
    # CPU: no bf16 peak, no per-path peak memory, no kernels to time
    assert ours["mfu"] is None and ours["peak_mem_gib"] is None and ours["gpu_busy"] is None

    out = capsys.readouterr().out
    assert "padfree: max RMS-relative logits error" in out and ": PASS" in out
    table = out[out.index("  path ") :]
    assert "upstream_padded" in table and "1.00x" in table and "padfree" in table


def test_fastest_times_both_settings_and_compares_each_path_at_its_faster_one(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    assert main([*ARGS, "--paths", "upstream_padded,padfree", "--fastest", "--json", str(out_file)]) == 0
    report = json.loads(out_file.read_text())
    assert report["settings"]["checkpointing"] == [True, False]
    runs = {(r["path"], r["gradient_checkpointing"]): r for r in report["results"]}
    assert set(runs) == {(p, c) for p in ("upstream_padded", "padfree") for c in (True, False)}
    for checkpointing in (True, False):  # ratios only within one setting
        ours, padded = runs[("padfree", checkpointing)], runs[("upstream_padded", checkpointing)]
        assert ours["vs_upstream_padded"] == ours["real_tokens_per_s"] / padded["real_tokens_per_s"]
    fastest = {r["path"]: r for r in report["fastest"]}
    for path in ("upstream_padded", "padfree"):
        speeds = {c: runs[(path, c)]["real_tokens_per_s"] for c in (True, False)}
        assert fastest[path]["gradient_checkpointing"] == max(speeds, key=speeds.get)
        assert fastest[path]["real_tokens_per_s"] == max(speeds.values())
    assert fastest["padfree"]["vs_upstream_padded"] == (
        fastest["padfree"]["real_tokens_per_s"] / fastest["upstream_padded"]["real_tokens_per_s"]
    )
    out = capsys.readouterr().out
    assert "activation checkpointing on and off" in out and "each path at its faster checkpointing setting" in out


def test_rounds_give_medians_and_same_round_ratios(tmp_path, capsys):
    """--rounds 3: every path is timed once per round; ratios pair paths of the same round, and the table
    gives each path's median over rounds, its range and the median of its same-round ratios."""
    out_file = tmp_path / "bench.json"
    assert main([*ARGS, "--paths", "upstream_padded,padfree", "--rounds", "3", "--json", str(out_file)]) == 0
    report = json.loads(out_file.read_text())
    runs = {(r["path"], r["round"]): r for r in report["results"]}
    assert set(runs) == {(p, i) for p in ("upstream_padded", "padfree") for i in range(3)}
    ratios = []
    for i in range(3):
        ours, padded = runs[("padfree", i)], runs[("upstream_padded", i)]
        assert ours["vs_upstream_padded"] == ours["real_tokens_per_s"] / padded["real_tokens_per_s"]
        ratios.append(ours["vs_upstream_padded"])
    summary = {r["path"]: r for r in report["summary"]}
    speeds = sorted(runs[("padfree", i)]["real_tokens_per_s"] for i in range(3))
    assert summary["padfree"]["rounds"] == 3 and summary["padfree"]["real_tokens_per_s"] == speeds[1]
    assert summary["padfree"]["real_tokens_per_s_range"] == [speeds[0], speeds[2]]
    assert summary["padfree"]["vs_upstream_padded"] == sorted(ratios)[1]
    out = capsys.readouterr().out
    assert "in each of 3 rounds (medians below)" in out and "(round 3 of 3)" in out
    table = out[out.index("  path ") :]
    assert f"{speeds[1]:,.0f} ({speeds[0]:,.0f}-{speeds[2]:,.0f})" in table


def _leak(monkeypatch, op: str) -> None:
    """Make the layer's `op` run the packed row as one sequence: state flows from each document to the next."""
    real = getattr(padfree.models.layers, op)

    def leaky(*args, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):
        return real(*args, **kwargs)

    monkeypatch.setattr(padfree.models.layers, op, leaky)


def test_bench_stops_when_documents_leak(tmp_path, monkeypatch, capsys):
    _leak(monkeypatch, "causal_conv1d")
    out_file = tmp_path / "bench.json"
    assert main([*ARGS, "--json", str(out_file)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: padfree's packed row differs from the per-document runs" in out and "nothing was timed" in out
    report = json.loads(out_file.read_text())
    assert not report["gate"]["passed"] and report["gate"]["max_error"] > 1e-2
    assert report["results"] == []


@pytest.mark.parametrize("leaks", [False, True])
def test_bf16_gate_bound_follows_rounding_and_still_catches_a_leak(leaks, monkeypatch):
    """In bf16 the bound grows to 3x upstream's own bf16-vs-fp32 error; a leaking recurrence must stay above it."""
    if leaks:
        _leak(monkeypatch, "chunk_gated_delta_rule")
    gate = correctness_gate(shape_config("tiny"), [70, 1, 17, 3, 40], torch.device("cpu"), torch.bfloat16, 0,
                            GATE_INIT_STD["tiny"])  # fmt: skip
    assert gate["rounding_error"] > 0
    assert gate["bound"] == max(BOUNDS[torch.bfloat16][0], ROUNDING_MARGIN * gate["rounding_error"])
    assert gate["passed"] is not leaks, gate


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--paths", "padfree,upstream"], "--paths padfree,upstream: give a comma list of upstream_padded"),
        (["--row-tokens", "64", "--median-len", "5000"], "every benchmark row holds a single document"),
        (["--fastest", "--no-gradient-checkpointing"], "--fastest times every path with checkpointing on and off"),
        (["--rounds", "0"], "--rounds 0: time the paths at least once"),
        (["--paths", "padfree_graphed"], "padfree_graphed captures CUDA graphs; drop it from --paths on cpu"),
        (["--paths", "padfree,padfree_graphed", "--warmup", "1"], "padfree_graphed needs at least 2 warm-up rows"),
    ],
)
def test_bench_rejects_bad_settings_before_any_compute(flags, message, capsys):
    assert main(["bench", "--device", "cpu", *flags]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_unseen_shapes_picks_one_batch_per_new_shape():
    from padfree.bench.train_step import unseen_shapes

    def batch(rows, cols):
        return {"input_ids": torch.zeros(rows, cols, dtype=torch.long)}

    warm = [batch(4, 100)]
    timed = [batch(4, 100), batch(4, 120), batch(3, 120), batch(4, 120), batch(4, 90)]
    picked = unseen_shapes(warm, timed)
    assert [tuple(b["input_ids"].shape) for b in picked] == [(4, 120), (3, 120), (4, 90)]
    assert picked[0] is timed[1]  # the batches themselves, not copies


def test_eager_packed_paths_run_every_timed_row_once_before_timing():
    """FlashQLA compiles per row's documents, not per shape: a packed path pre-runs all its rows, the padded path
    its new shapes only."""
    from padfree.bench.train_step import untimed_first

    warm = [{"input_ids": torch.zeros(1, 64, dtype=torch.long)}]
    rows = [{"input_ids": torch.zeros(1, 64, dtype=torch.long)} for _ in range(3)]
    assert untimed_first("upstream_packed", warm, rows) == rows and untimed_first("padfree", warm, rows) == rows
    assert untimed_first("upstream_padded", warm, rows) == []  # one shape, already warmed


def test_paths_get_the_same_weights():
    """Same seed: every path's model starts from the same weights, drawn on the device (here the CPU)."""
    from padfree.bench.train_step import build_model

    config = shape_config("tiny")
    first, second = (build_model(config, 0, torch.device("cpu"), torch.float32, False, None) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    third = build_model(config, 1, torch.device("cpu"), torch.float32, False, None)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), third.parameters()))


def test_default_paths_add_the_graphed_step_where_it_runs(monkeypatch):
    import padfree.ops._backend as backend
    from padfree.bench.run import default_paths
    from padfree.bench.train_step import DEFAULT_PATHS

    assert default_paths(torch.device("cpu"), warmup=2) == DEFAULT_PATHS
    monkeypatch.setattr(backend, "resolve_backend", lambda name, device, op="gated_delta": "fla")
    assert default_paths(torch.device("cuda"), warmup=2) == (*DEFAULT_PATHS, "padfree_graphed")
    assert default_paths(torch.device("cuda"), warmup=1) == DEFAULT_PATHS  # it needs two warm-up rows
    monkeypatch.setattr(backend, "resolve_backend", lambda name, device, op="gated_delta": "torch")
    assert default_paths(torch.device("cuda"), warmup=2) == DEFAULT_PATHS  # no FLA: no graph


def test_workload_leaves_out_the_packings_leftover_row():
    # At the 0.8b defaults (8,192-token rows, 8 + 3 rows) the packing ends in a leftover row of 219 tokens, which
    # the shuffle put among the timed rows: every path then paid a full row's time for 3% of its tokens.
    workload = make_workload(1000, 8192, steps=8, warmup=3, median_len=300.0, seed=0)
    lengths = [len(s) for s in workload.samples]
    plan = pack(lengths, 8192, seed=0)
    leftover = [row for row, real in zip(plan.rows, plan.row_lengths()) if 2 * real < 8192]
    assert leftover and leftover[0] in plan.rows[:11]  # it would have been timed
    assert len(workload.rows) == 11 and leftover[0] not in workload.rows
    assert min(sum(lengths[i] for i in row) for row in workload.rows) >= 8192 // 2
