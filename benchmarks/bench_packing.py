"""Benchmark padfree's bin packing: speed and efficiency of `pack` and `pack_stream`.

    python benchmarks/bench_packing.py            # a table
    python benchmarks/bench_packing.py --json     # one JSON object per case, one per line

Cases: 1,000,000 lognormal lengths (median 300, sigma 1) and Pareto lengths (min 64, alpha 1.2),
clipped to the budget; the CPython stdlib corpus (1,788 real files, truncate policy) at budget 8192
and 16384. Times are the best of --repeats runs of the call alone: generating the lengths and, for
the stream, building the (item, length) list are not timed. The stdlib corpus is also streamed
with a 256-sample buffer (it fits one default buffer, which would just repeat `pack`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from padfree.corpus import load_cpython_lengths, lognormal_lengths, pareto_lengths
from padfree.packing import PackingStats, pack
from padfree.packing_stream import pack_stream


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_pack(name, lengths, budget, repeats):
    seconds, plan = best_time(lambda: pack(lengths, budget, policy="truncate"), repeats)
    return _record(name, "pack", budget, None, seconds, plan.stats)


def run_stream(name, lengths, budget, buffer_size, repeats):
    pairs = list(enumerate(lengths.tolist()))

    def consume():
        stats = PackingStats()
        for _ in pack_stream(pairs, budget, buffer_size=buffer_size, policy="truncate", stats=stats):
            pass
        return stats

    seconds, stats = best_time(consume, repeats)
    return _record(name, "pack_stream", budget, buffer_size, seconds, stats)


def _record(corpus, method, budget, buffer_size, seconds, stats: PackingStats) -> dict:
    return {
        "corpus": corpus,
        "method": method,
        "budget": budget,
        "buffer_size": buffer_size,
        "samples": stats.num_samples,
        "rows": stats.num_rows,
        "efficiency": round(stats.efficiency, 6),
        "truncated": stats.truncated,
        "empty": stats.empty,
        "seconds": round(seconds, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark padfree.pack and pack_stream.")
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic samples per corpus")
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args()

    synthetic = {
        "lognormal(median=300,sigma=1)": lognormal_lengths(args.n, 300, 1.0, args.budget, seed=0),
        "pareto(min=64,alpha=1.2)": pareto_lengths(args.n, 64, 1.2, args.budget, seed=0),
    }
    records = []
    for name, lengths in synthetic.items():
        records.append(run_pack(name, lengths, args.budget, args.repeats))
        records.append(run_stream(name, lengths, args.budget, args.buffer_size, args.repeats))
    cpython = load_cpython_lengths()
    for budget in (8192, 16384):
        records.append(run_pack("cpython-stdlib", cpython, budget, args.repeats))
        # The corpus fits one default buffer; a small one shows streaming on real lengths.
        records.append(run_stream("cpython-stdlib", cpython, budget, 256, args.repeats))

    if args.json:
        for record in records:
            print(json.dumps(record))
        return
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, best of {args.repeats}")
    print(f"{'corpus':32} {'method':12} {'budget':>6} {'buffer':>7} {'samples':>9} {'rows':>7} {'effic.':>8} {'trunc':>6} {'sec':>7}")
    for r in records:
        buffer = "" if r["buffer_size"] is None else r["buffer_size"]
        print(
            f"{r['corpus']:32} {r['method']:12} {r['budget']:>6} {buffer:>7} {r['samples']:>9,} {r['rows']:>7,} "
            f"{r['efficiency']:>8.4%} {r['truncated']:>6} {r['seconds']:>7.3f}"
        )


if __name__ == "__main__":
    main()
