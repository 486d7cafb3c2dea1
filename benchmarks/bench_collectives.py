"""The sharded step's collectives alone: how long NCCL takes for the all-gathers, reduce-scatters, all-to-alls and
gradient all-reduces of the 0.8B sp=2 step at its sizes, with nothing else running. Profiles of the step report
each collective's kernel time, which includes waiting for the slower rank and sharing the GPU with the backward;
this says what the transfer itself costs.

    torchrun --nproc-per-node 2 benchmarks/bench_collectives.py --out collectives.jsonl

Each collective: 5 untimed calls, then `--iters` calls captured in one CUDA graph (as the captured step runs
them), replayed 3 times and timed with CUDA events; also the same calls eagerly. Rank 0 writes one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

MIB = 1 << 20


def _ops(group, tokens: int, hidden: int, bucket_mib: int):
    P = dist.get_world_size(group)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)  # one rank's layer input
    gathered = x.new_empty(P * tokens, hidden)
    shares = torch.randn(P * tokens, hidden, device="cuda", dtype=torch.bfloat16)  # out_proj's shares
    scattered = x.new_empty(tokens, hidden)
    send = torch.randn(P, tokens, 2 * hidden, device="cuda", dtype=torch.bfloat16)  # an all-to-all of [T, 2 * hidden]
    recv = torch.empty_like(send)
    bucket = torch.randn(bucket_mib * MIB // 2, device="cuda", dtype=torch.bfloat16)
    return {
        f"all_gather {x.numel() * 2 / MIB:.0f} MiB per rank": lambda: dist.all_gather_into_tensor(gathered, x, group=group),
        f"reduce_scatter {shares.numel() * 2 / MIB:.0f} MiB in": lambda: dist.reduce_scatter_tensor(scattered, shares, group=group),
        f"all_to_all {send.numel() * 2 / MIB:.0f} MiB": lambda: dist.all_to_all_single(recv, send, group=group),
        f"all_reduce {bucket_mib} MiB": lambda: dist.all_reduce(bucket, group=group),
    }


def time_calls(fn, iters: int, graph: bool, warmup: int = 5) -> float | str:
    """Microseconds per call of `fn`: `warmup` untimed calls, then `iters` calls (captured in one CUDA graph with
    `graph`) run 3 times, the fastest. Where capture fails, its error's first line instead (also used by
    bench_fused_collectives.py)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                for _ in range(iters):
                    fn()
        except Exception as error:  # a measurement script: report what capture says
            return f"capture failed: {str(error).splitlines()[0][:200]}"
        run = g.replay
    else:
        def run():
            for _ in range(iters):
                fn()
    run()
    torch.cuda.synchronize()
    dist.barrier()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / iters)
    return round(min(times), 1)


def start_nccl() -> int:
    """This process's rank in a fresh NCCL group (torchrun's env), on the GPU LOCAL_RANK names."""
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return rank


def report(record: dict, out: str) -> None:
    """Rank 0 prints `record` and appends it to `out` as one JSON line; then every rank leaves the group."""
    if dist.get_rank() == 0:
        print(json.dumps(record))
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--bucket-mib", type=int, default=25)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start_nccl()
    group = dist.group.WORLD
    results = {}
    for name, fn in _ops(group, args.tokens, args.hidden, args.bucket_mib).items():
        results[name] = {"eager_us": time_calls(fn, args.iters, graph=False), "graph_us": time_calls(fn, args.iters, graph=True)}
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(),
              "world": dist.get_world_size(), "torch": torch.__version__, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
              "results": results}  # fmt: skip
    report(record, args.out)


if __name__ == "__main__":
    main()
