"""How fast the sequence-parallel exchanges move bytes between 2 GPUs, one op at a time.

    torchrun --nproc-per-node 2 benchmarks/gpu/bench_exchange.py --out exchange.jsonl

Why: in the Ulysses sp=2 step of the 0.8b shape (H200, twelfth session) NCCL's all-to-all kernels
took 200 of 555 ms of kernel time, 144 calls at 1.39 ms, ~44 GB/s for the bytes they move. This
times, on the layer shapes of that step (16,384 tokens per rank, bf16), each way to do the same
exchange, back to back after a barrier, so a rank's lateness is not in the numbers:
- all_to_all: torch.distributed.all_to_all_single (NCCL's grouped send/recv);
- pair_all_gather: at 2 ranks, each rank all-gathers the half the other rank needs (the same bytes on
  the wire, through NCCL's all-gather, which runs on all its channels);
- all_reduce of the same buffer, for NCCL's collective bandwidth on this pair.
Bandwidth is the bytes one rank sends (half the buffer) over the median time.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

SHAPES = {"gdn_in": (16384, 6176), "gdn_out": (16384, 2048), "attn_in": (16384, 3072), "attn_out": (16384, 2048)}


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        dist.barrier()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="exchange.jsonl")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--label", default=os.environ.get("EXCHANGE_LABEL", "default"))
    args = parser.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    assert world == 2, "pair_all_gather is a 2-rank exchange"
    peer = 1 - rank
    results = {}
    for name, (T, C) in SHAPES.items():
        send = torch.randn(world, T // world, C, device="cuda", dtype=torch.bfloat16)
        recv = torch.empty_like(send)
        gathered = torch.empty_like(send)
        sent_bytes = send[peer].numel() * send.element_size()

        def all_to_all():
            dist.all_to_all_single(recv, send)

        def pair_all_gather():
            dist.all_gather_into_tensor(gathered, send[peer].contiguous())
            recv[rank].copy_(send[rank])
            recv[peer].copy_(gathered[peer])

        def all_reduce():
            dist.all_reduce(recv)

        row = {}
        for fn in (all_to_all, pair_all_gather, all_reduce):
            ms = median_ms(fn, args.iters)
            row[fn.__name__] = {"ms": round(ms, 3), "GB/s": round(sent_bytes / ms / 1e6, 1)}
        # the pair exchange gives what the all-to-all gives
        all_to_all()
        expect = recv.clone()
        pair_all_gather()
        row["pair_all_gather_equal"] = bool(torch.equal(expect, recv))
        results[name] = dict(row, MB_sent=round(sent_bytes / 1e6, 1))
    if rank == 0:
        record = {"label": args.label, "device": torch.cuda.get_device_name(),
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())), "date": time.strftime("%Y-%m-%d %H:%M"),
                  "results": results}
        print(json.dumps(record), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
