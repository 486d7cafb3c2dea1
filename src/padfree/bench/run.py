"""`padfree bench`: the correctness gate, then each path's training-step throughput; a table and JSON.

One process, one workload, one model shape and one set of settings for every path, so the ratios
compare like with like. With `fastest`, every path is timed with activation checkpointing on and
off, the ratios are given per setting, and each path at its own faster setting that fits the device
is compared too (issue #7 asks for both comparisons). The JSON (--json) is rewritten after the gate
and after each path, so a run cut short by a time limit keeps what it measured.

With `rounds` > 1 the whole sequence of paths (and settings) is timed that many times, one round after
another, and the table gives each path's median over its rounds, its range, and the median of its
same-round ratios. Why: on a GPU machine whose step waits on the host, a path's tokens/s moved by
about 12% between runs minutes apart (docs/benchmarks.md, ninth session), as large as the effects
being compared. A ratio within one round compares paths timed close together, and the median over
rounds drops a round spoiled by a busy host.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TextIO

import torch
import transformers

import padfree
from padfree.bench.gate import correctness_gate, gate_lengths
from padfree.bench.shapes import GATE_INIT_STD, SHAPES, shape_config
from padfree.bench.train_step import (
    DEFAULT_PATHS, GRAPHED_PATHS, LENGTH_SIGMA, PATCH_SETTINGS, PATHS, Workload, attention_flops, make_workload,
    measure,
)  # fmt: skip
from padfree.check import package_version
from padfree.ops._backend import flash_qla_dispatched


@dataclass
class BenchSettings:
    shape: str = "tiny"
    device: str = "auto"
    dtype: str = "auto"
    row_tokens: int | None = None  # None: 8192 on CUDA, 2048 on CPU
    steps: int = 5
    warmup: int = 2
    paths: tuple[str, ...] | None = None  # None: default_paths(device)
    gradient_checkpointing: bool | None = None  # None: on (or both, with fastest)
    fastest: bool = False  # time every path with checkpointing on and off; compare each at its faster one
    rounds: int = 1  # time the whole sequence of paths this many times; report medians (summarize_rounds)
    median_len: float = 300.0
    seed: int = 0
    json: str | None = None


def default_paths(device: torch.device, warmup: int) -> tuple[str, ...]:
    """DEFAULT_PATHS, plus padfree's fastest step, the CUDA-graph one, where it runs: CUDA with FLA's kernels
    (and the two warm-up rows it needs)."""
    from padfree.ops._backend import resolve_backend

    graphed = device.type == "cuda" and warmup >= 2 and resolve_backend("auto", device) == "fla"
    return DEFAULT_PATHS + (("padfree_graphed",) if graphed else ())


def _validate(s: BenchSettings) -> None:
    if s.shape not in SHAPES:
        raise ValueError(f"--shape {s.shape}: choose one of {', '.join(SHAPES)}.")
    unknown = [p for p in s.paths if p not in PATHS]
    if unknown or not s.paths:
        raise ValueError(f"--paths {','.join(s.paths)}: give a comma list of {', '.join(PATHS)}.")
    if any(p in GRAPHED_PATHS for p in s.paths) and s.warmup < 2:
        raise ValueError(
            f"--warmup {s.warmup}: padfree_graphed needs at least 2 warm-up rows (eager steps tune the kernels, the "
            "last one captures the graph)."
        )
    if s.rounds < 1:
        raise ValueError(f"--rounds {s.rounds}: time the paths at least once.")
    if s.steps < 1 or s.warmup < 0:
        raise ValueError(f"--steps {s.steps} --warmup {s.warmup}: need at least 1 timed step and warmup >= 0.")
    if s.row_tokens is not None and s.row_tokens < 2:
        raise ValueError(f"--row-tokens {s.row_tokens}: a row needs at least 2 tokens.")
    if s.median_len <= 0:
        raise ValueError(f"--median-len {s.median_len}: give a positive median sample length.")
    if s.fastest and s.gradient_checkpointing is not None:
        raise ValueError(
            "--fastest times every path with checkpointing on and off; drop --(no-)gradient-checkpointing."
        )


def checkpointing_settings(s: BenchSettings) -> tuple[bool, ...]:
    """The activation-checkpointing settings each path is timed with, in order."""
    return (True, False) if s.fastest else (s.gradient_checkpointing is not False,)


def _write(report: dict, path: str | None) -> None:
    if path is not None:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def _gate_lines(gate: dict) -> str:
    n, up = gate["lengths"], gate["upstream_packed"]
    lines = [
        f"  correctness, before timing: a benchmark row of {len(n)} documents ({min(n)} to {max(n)} tokens), packed, "
        f"vs each document alone (unpatched model):",
    ]
    for path, error in gate["errors"].items():
        verdict = "PASS" if error <= gate["bound"] else "FAIL"
        lines.append(f"    {path}: max RMS-relative logits error {error:.1e}, bound {gate['bound']:.1e} "
                     f"({gate['bound_reason']}): {verdict}")  # fmt: skip
    if up["refused"] is not None:
        lines.append(f"    upstream packed: refused: {up['refused']}")
    else:
        verdict = "MIXES DOCUMENTS" if up["mixes_documents"] else "keeps them apart"
        lines.append(f"    upstream packed: max RMS-relative logits error {up['max_error']:.1e}: {verdict}")
    return "\n".join(lines)


def _apart(result: dict, gate: dict) -> str:
    """Whether the path keeps documents apart, as the gate (or the path's design) says."""
    if result["path"] in PATCH_SETTINGS:
        return "yes (gate)"
    if result["path"] == "upstream_padded":
        return "yes (one per row)"
    up = gate["upstream_packed"]
    return "refused" if up["refused"] else "NO (gate)" if up["mixes_documents"] else "yes (gate)"


def _on_off(result: dict) -> str:
    return "on" if result["gradient_checkpointing"] else "off"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(results: list[dict], gate: dict) -> str:
    """Aligned columns for the paths that ran; a path that upstream refused (or that failed) gets its message."""
    rows = [("path", "checkpointing", "real tok/s", "vs padded", "vs packed", "MFU (+attn)", "peak mem", "packing",
             "docs apart")]  # fmt: skip
    failed = []
    for r in results:
        if "error" in r:
            failed.append(f"  {r['path']} (checkpointing {_on_off(r)}): {r['error']}")
            continue
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%} (+{r['attention_mfu']:.1%})"
        mem = "n/a (CPU)" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f} GiB"
        speed = f"{r['real_tokens_per_s']:,.0f}"
        if "real_tokens_per_s_range" in r:
            low, high = r["real_tokens_per_s_range"]
            speed += f" ({low:,.0f}-{high:,.0f})"
        rows.append((r["path"], _on_off(r), speed,
                     _ratio(r["vs_upstream_padded"]),
                     _ratio(r["vs_upstream_packed"]), mfu, mem, f"{r['packing_efficiency']:.1%}",
                     _apart(r, gate)))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + failed)


def _new_report(s: BenchSettings, device: torch.device, dtype: torch.dtype, config, workload: Workload) -> dict:
    timed = workload.lengths(workload.rows[s.warmup :])
    on_cuda = device.type == "cuda"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu, {torch.get_num_threads()} threads",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "padfree": padfree.__version__, **_kernel_package_versions()},
        # `checkpointing` replaces the raw flag (None when not given), which it resolves
        "settings": dict({k: v for k, v in asdict(s).items() if k != "gradient_checkpointing"},
                         device=device.type, dtype=str(dtype).removeprefix("torch."),
                         checkpointing=list(checkpointing_settings(s)),
                         row_tokens=workload.row_tokens, optimizer="AdamW, fused" if on_cuda else "AdamW"),
        "samples": {"lengths": "lognormal", "median": s.median_len, "sigma": LENGTH_SIGMA,
                    "timed_documents": len(timed), "timed_real_tokens": sum(timed),
                    "attention_flops_per_token": attention_flops(config, timed) / sum(timed)},
        "peak_memory": "torch.cuda.max_memory_allocated over the timed steps" if on_cuda else
                       "not measured on CPU: the process's RSS high-water mark cannot be reset between paths",
        "gate": None,
        "results": [],
        "fastest": None,
    }  # fmt: skip


def _kernel_package_versions() -> dict:
    """The installed kernel packages the paths may run: FLA's gated delta rule goes to FlashQLA's kernels when
    flash_qla is installed (every path; padfree_graphed without FlashQLA's context parallelism)."""
    versions = {p: v for p in ("flash-linear-attention", "tilelang", "flash-qla") if (v := package_version(p)) != "-"}
    if "flash-qla" in versions:
        versions["gated delta rule"] = "FlashQLA via FLA" if flash_qla_dispatched() else "FLA (FLA_FLASH_QLA=0)"
    return versions


def _header(report: dict) -> str:
    s, samples = report["settings"], report["samples"]
    rounds = "" if s["rounds"] == 1 else f" in each of {s['rounds']} rounds (medians below)"
    return (
        f"padfree bench: shape {s['shape']}, {report['device']}, {s['dtype']}, rows of {s['row_tokens']:,} tokens, "
        f"{s['steps']} timed + {s['warmup']} warm-up rows per path{rounds}, activation checkpointing "
        f"{' and '.join('on' if c else 'off' for c in s['checkpointing'])}, {s['optimizer']}\n"
        f"  samples: {samples['timed_documents']} documents timed ({samples['timed_real_tokens']:,} real tokens, "
        f"the same for every path), lognormal lengths (median {s['median_len']:g}, sigma {LENGTH_SIGMA:g}, "
        f"at most {s['row_tokens']:,})"
        + (f"\n  gated delta rule: {report['versions']['gated delta rule']} (flash_qla installed)"
           if "gated delta rule" in report["versions"] else "")
    )


def _measure_or_refusal(path: str, checkpointing: bool, s: BenchSettings, config, workload: Workload, device,
                        dtype) -> dict:  # fmt: skip
    try:
        return dict(measure(path, config, workload, device, dtype, checkpointing, s.seed),
                    gradient_checkpointing=checkpointing)  # fmt: skip
    except torch.cuda.OutOfMemoryError as error:  # any path: not fitting the device is a result
        return {"path": path, "gradient_checkpointing": checkpointing,
                "error": f"does not fit: out of memory ({str(error).splitlines()[0][:120]})"}  # fmt: skip
    except Exception as error:
        if path in PATCH_SETTINGS:
            raise  # a padfree failure is a bug to report with its traceback, not a table entry
        # Upstream refusing packed rows (no FLA) or running out of memory is a result of the benchmark.
        word = "refused" if path == "upstream_packed" else "failed"
        return {"path": path, "gradient_checkpointing": checkpointing,
                "error": f"{word}: {type(error).__name__}: {error}"}  # fmt: skip


def run_bench(settings: BenchSettings, out: TextIO | None = None) -> int:
    """Print the report (and write the JSON); 0 when done, 1 when the gate failed, 2 for a bad setting."""
    from padfree.train.model import resolve_device, resolve_dtype

    out = out if out is not None else sys.stdout
    s = settings
    try:
        device = resolve_device(s.device)
        if s.paths is None:
            s = replace(s, paths=default_paths(device, s.warmup))
        _validate(s)
        dtype = resolve_dtype(s.dtype, device)
        if device.type != "cuda" and any(p in GRAPHED_PATHS for p in s.paths):
            raise ValueError(f"padfree_graphed captures CUDA graphs; drop it from --paths on {device.type}.")
        row_tokens = s.row_tokens or (8192 if device.type == "cuda" else 2048)
        config = shape_config(s.shape)
        workload = make_workload(config.vocab_size, row_tokens, s.steps, s.warmup, s.median_len, s.seed)
        lengths = gate_lengths(workload)
    except ValueError as error:
        print(f"padfree bench: error: {error}", file=sys.stderr)
        return 2
    report = _new_report(s, device, dtype, config, workload)
    print(_header(report), file=out)
    patches = {path: PATCH_SETTINGS[path] for path in s.paths if path in PATCH_SETTINGS} or {"padfree": {}}
    gate = correctness_gate(config, lengths, device, dtype, s.seed, GATE_INIT_STD[s.shape], patches)
    report["gate"] = gate
    _write(report, s.json)
    print(_gate_lines(gate), file=out, flush=True)
    if not gate["passed"]:
        print(
            f"FAIL: padfree's packed row differs from the per-document runs (error {gate['max_error']:.1e} > bound "
            f"{gate['bound']:.1e}): documents leak into each other here, so nothing was timed. Run `padfree check "
            f"--device {device.type}` and report both outputs.",
            file=out,
        )
        return 1
    settings = checkpointing_settings(s)
    for round_index in range(s.rounds):
        for checkpointing in settings:
            for path in s.paths:
                result = _measure_or_refusal(path, checkpointing, s, config, workload, device, dtype)
                result["round"] = round_index
                report["results"].append(result)
                _add_ratios(report["results"])
                _write(report, s.json)
                speed = "" if "error" in result else f"{result['real_tokens_per_s']:,.0f} tok/s"
                if result.get("gpu_busy") is not None:
                    speed += f" (GPU busy {result['gpu_busy']:.0%} of the step)"
                done = result["error"].split(":")[0] if "error" in result else speed
                where = "" if s.rounds == 1 else f" (round {round_index + 1} of {s.rounds})"
                setting = "on" if checkpointing else "off"
                print(f"  {path}, checkpointing {setting}{where}: {done}", file=out, flush=True)
    rows = report["results"]
    if s.rounds > 1:
        rows = report["summary"] = summarize_rounds(report["results"])
        _write(report, s.json)
    print(_table(rows, gate), file=out)
    if len(settings) > 1:
        report["fastest"] = fastest_of_each(rows)
        _write(report, s.json)
        print(_fastest_table(report["fastest"]), file=out)
    return 0


def _add_ratios(results: list[dict]) -> None:
    """Each path's real tokens/s over each upstream path's with the same checkpointing setting in the same
    round (None where either did not run)."""
    for key in {(r["round"], r["gradient_checkpointing"]) for r in results}:
        _add_ratios_within([r for r in results if (r["round"], r["gradient_checkpointing"]) == key])


def summarize_rounds(results: list[dict]) -> list[dict]:
    """One row per (path, checkpointing) over its rounds: the median real tokens/s (and MFU), their range,
    the median of the path's same-round ratios, the largest peak memory. A path that failed in every
    round keeps its first error; failed rounds are left out of the others' statistics."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["path"], r["gradient_checkpointing"]), []).append(r)
    summary = []
    for runs in groups.values():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            summary.append(dict(runs[0], rounds=0))
            continue
        row = dict(ok[0], rounds=len(ok))
        row.pop("round")
        for key in ("real_tokens_per_s", "seconds", "mfu", "attention_mfu", "gpu_busy", "vs_upstream_padded",
                    "vs_upstream_packed"):  # fmt: skip
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        speeds = [r["real_tokens_per_s"] for r in ok]
        row["real_tokens_per_s_range"] = [min(speeds), max(speeds)]
        memory = [r["peak_mem_gib"] for r in ok if r["peak_mem_gib"] is not None]
        row["peak_mem_gib"] = max(memory) if memory else None
        summary.append(row)
    return summary


def fastest_of_each(results: list[dict]) -> list[dict]:
    """Each path at its faster checkpointing setting among those that ran (a failure or OOM is skipped),
    with ratios between these fastest runs: issue #7's 'each side at its fastest settings that fit'."""
    best: dict[str, dict] = {}
    for r in results:
        if "error" not in r and r["real_tokens_per_s"] > best.get(r["path"], {}).get("real_tokens_per_s", 0):
            best[r["path"]] = r
    fastest = [dict(best[p]) for p in dict.fromkeys(r["path"] for r in results) if p in best]
    _add_ratios_within(fastest)
    return fastest


def _fastest_table(fastest: list[dict]) -> str:
    lines = ["  each path at its faster checkpointing setting (ratios between these):"]
    for r in fastest:
        lines.append(f"    {r['path']}: {r['real_tokens_per_s']:,.0f} tok/s, checkpointing {_on_off(r)}, "
                     f"vs upstream padded {_ratio(r['vs_upstream_padded'])}, "
                     f"vs upstream packed {_ratio(r['vs_upstream_packed'])}")  # fmt: skip
    return "\n".join(lines)


def _add_ratios_within(results: list[dict]) -> None:
    speed = {r["path"]: r.get("real_tokens_per_s") for r in results}
    for r in results:
        for base in ("upstream_padded", "upstream_packed"):
            ok = r.get("real_tokens_per_s") and speed.get(base)
            r[f"vs_{base}"] = r["real_tokens_per_s"] / speed[base] if ok else None
