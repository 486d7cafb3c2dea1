"""On 2 (or 4) CUDA GPUs: the gather_scatter exchange's fused collectives over symmetric memory
(`SequenceParallel(collectives="symmetric_memory")`, padfree.parallel.fused) against NCCL's all-gather and
reduce-scatter, with the same products.

Skipped without 2 GPUs. One process per GPU (4 where there are 4, else 2) over NCCL; on each rank random bf16 inputs,
weights and output gradients at two sizes (256 and 1,000 tokens per rank). Per function (`gather_matmul` with three weights,
`matmul_scatter` with one), the outputs and the gradients of the input and of every weight, computed:
- in fp32 through NCCL (the reference: the same math with the collectives PyTorch and NCCL provide);
- in bf16 through NCCL, and in bf16 through symmetric memory.
Claim: symmetric memory's bf16 error against the fp32 reference is at most 1.5x NCCL's bf16 error + 1e-3 (both
round the same products to bf16; the sums over ranks add in a different order: NCCL sums bf16 partials, padfree
adds the arrived partial as an addmm's input, or after its own sum of products), and the outputs are not all zero (a transfer that
never happened would leave the symmetric buffer's stale or zero contents).
"""

from __future__ import annotations

import faulthandler
import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.device_count() >= 2), reason="needs 2 CUDA GPUs"
)
SIZES = ((256, 64), (1000, 96))  # (tokens per rank, hidden)
WORLD = 4 if torch.cuda.device_count() >= 4 else 2  # 4 ranks where there are 4 GPUs: each rank has several peers


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _run(fn, inputs, grads, collectives, dtype):
    """fn's outputs and the gradients of all its inputs, in `dtype`, through `collectives`."""
    sp = SimpleNamespace(group=dist.group.WORLD, collectives=collectives, size=WORLD)
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    outs = fn(leaves, sp)
    torch.autograd.backward(outs, [g.to(dtype) for g in grads])
    return [o.detach() for o in outs] + [t.grad for t in leaves]


def _worker(rank: int, init_file: str, out_file: str):
    from padfree.parallel.fused import gather_matmul, matmul_scatter

    faulthandler.dump_traceback_later(240, exit=True)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, device_id=device)
    results = {}
    try:
        for T_local, C in SIZES:
            g = torch.Generator(device=device).manual_seed(1 + rank)
            randn = lambda *shape: torch.randn(*shape, device=device, generator=g)  # noqa: E731
            ks = (3 * C // 2, 4, C // 2)  # like GDN's qkv rows, its b|a rows and its z rows of one rank's heads
            cases = {
                "gather_matmul": (
                    lambda t, sp: gather_matmul(t[0], t[1:], sp),
                    [randn(T_local, C)] + [randn(k, C) / C**0.5 for k in ks],
                    [randn(WORLD * T_local, k) for k in ks],
                ),
                "matmul_scatter": (
                    lambda t, sp: [matmul_scatter(t[0], t[1], sp)],
                    [randn(WORLD * T_local, C // 2), randn(C, C // 2) / C**0.5],
                    [randn(T_local, C)],
                ),
            }
            for name, (fn, inputs, grads) in cases.items():
                ref = _run(fn, inputs, grads, "c10d", torch.float32)
                nccl = _run(fn, inputs, grads, "c10d", torch.bfloat16)
                symm = _run(fn, inputs, grads, "symmetric_memory", torch.bfloat16)
                results[f"{name} {T_local}x{C}"] = {
                    "nccl": [_rel(o, r) for o, r in zip(nccl, ref)],
                    "symm": [_rel(o, r) for o, r in zip(symm, ref)],
                    "nonzero": [bool(o.abs().sum() > 0) for o in symm],
                }
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, results)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(gathered, f)
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fused_collectives")
    out_file = folder / "results.json"
    mp.start_processes(_worker, args=(str(folder / "init"), str(out_file)), nprocs=WORLD, start_method="spawn")
    return json.loads(out_file.read_text())


@pytest.mark.parametrize("case", [f"{n} {t}x{c}" for n in ("gather_matmul", "matmul_scatter") for t, c in SIZES])
def test_symmetric_memory_matches_nccl_against_fp32(results, case):
    for rank, per_rank in enumerate(results):
        r = per_rank[case]
        assert all(r["nonzero"]), f"rank {rank} {case}: an output or gradient is all zero"
        for i, (symm, nccl) in enumerate(zip(r["symm"], r["nccl"])):
            assert symm <= 1.5 * nccl + 1e-3, f"rank {rank} {case} tensor {i}: bf16 error {symm:.2e} vs NCCL's {nccl:.2e}"
