"""The gather_scatter exchange's collectives fused with their matmuls through PyTorch's symmetric memory,
against NCCL's collective then the matmul, at the 0.8B sp=2 step's sizes, eager and captured in a CUDA graph.

    torchrun --nproc-per-node 2 benchmarks/bench_fused_collectives.py --out fused.jsonl

With symmetric memory each rank copies the other's shard over NVLink with the copy engine (no SMs) while it
multiplies its own (PyTorch's `symm_mem.fused_all_gather_matmul` / `fused_matmul_reduce_scatter`). The forward
of the GDN layer's projections: all-gather of the [T_local, hidden] input, then three matmuls (qkv, b|a, z rows
of this rank's heads); its output: the matmul by this rank's out_proj columns, then the reduce-scatter. Each
case also checks the fused result against NCCL's (bf16; reports the largest difference relative to the largest
value). Also padfree's own matmul + reduce-scatter over symmetric memory (padfree.parallel.fused), for one product
and for the sum of three (the projections' backward). Rank 0 writes one JSON line.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
import torch.distributed._symmetric_memory  # noqa: F401  registers torch.ops.symm_mem's fused ops

from bench_collectives import report, start_nccl, time_calls  # this folder: the script's own, first on sys.path
from padfree.parallel.fused import _matmul_then_scatter


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank = start_nccl()
    group = dist.group.WORLD
    P = dist.get_world_size()
    name = group.group_name
    symm = torch.ops.symm_mem
    T, C = args.tokens, args.hidden
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    torch.manual_seed(rank)
    x = torch.randn(T, C, **bf16)
    # this rank's rows of GDN's in_proj_qkv, in_proj_b|a and in_proj_z at the 0.8B shape (16 heads of 128, P = 2)
    weights = [torch.randn(n, C, **bf16) / C**0.5 for n in (3 * 2048 // P, 2 * 16 // P, 2048 // P)]
    heads = torch.randn(P * T, 2048 // P, **bf16)  # this rank's heads over the whole row
    columns = torch.randn(C, 2048 // P, **bf16) / 32  # its columns of out_proj
    gathered = x.new_empty(P * T, C)
    scattered = x.new_empty(T, C)

    def nccl_gather_matmul():
        dist.all_gather_into_tensor(gathered, x, group=group)
        return [gathered @ w.T for w in weights]

    def fused_gather_matmul():
        return symm.fused_all_gather_matmul(x, [w.T for w in weights], 0, name, return_A=True)[1]

    def nccl_matmul_scatter():
        dist.reduce_scatter_tensor(scattered, heads @ columns.T, group=group)
        return scattered

    def fused_matmul_scatter():
        return symm.fused_matmul_reduce_scatter(heads, columns.T, "sum", 0, name)

    def padfree_matmul_scatter():  # each rank's products for the other's rows written straight into its memory
        return _matmul_then_scatter([(heads, columns.T)], group, symmetric=True)

    # the backward of the projections: the reduce-scatter of the sum of three products
    grads = [torch.randn(P * T, w.shape[0], **bf16) for w in weights]

    def nccl_sum_scatter():
        return _matmul_then_scatter(list(zip(grads, weights)), group, symmetric=False)

    def padfree_sum_scatter():
        return _matmul_then_scatter(list(zip(grads, weights)), group, symmetric=True)

    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(), "world": P,
              "torch": torch.__version__, "tokens_per_rank": T, "hidden": C, "results": {}}  # fmt: skip
    try:
        ref, got = nccl_gather_matmul(), fused_gather_matmul()
        record["gather_matmul_max_rel_diff"] = max(_rel(g, r) for g, r in zip(got, ref))
        ref = nccl_matmul_scatter().clone()
        record["matmul_scatter_max_rel_diff"] = _rel(fused_matmul_scatter(), ref)
        record["padfree_matmul_scatter_max_rel_diff"] = _rel(padfree_matmul_scatter(), ref)
        record["padfree_sum_scatter_max_rel_diff"] = _rel(padfree_sum_scatter(), nccl_sum_scatter())
        cases = {"gather_matmul": {"nccl": nccl_gather_matmul, "fused": fused_gather_matmul},
                 "matmul_scatter": {"nccl": nccl_matmul_scatter, "fused": fused_matmul_scatter,
                                    "padfree": padfree_matmul_scatter},
                 "sum3_scatter": {"nccl": nccl_sum_scatter, "padfree": padfree_sum_scatter}}  # fmt: skip
        for case, ways in cases.items():
            for graph in (False, True):
                mode = "graph" if graph else "eager"
                for way, fn in ways.items():
                    record["results"][f"{case} {way} {mode}_us"] = time_calls(fn, args.iters, graph, warmup=3)
    except Exception as error:  # a measurement script: report how far it got
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    report(record, args.out)


if __name__ == "__main__":
    main()
