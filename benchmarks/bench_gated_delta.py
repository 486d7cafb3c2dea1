"""Forward + backward time of the chunked gated delta rule: transformers vs padfree vs FLA.

All cases run in one process on the same inputs, interleaved round by round (so a noisy neighbour
slows every case alike), and the table reports the best and the median round of each:

- transformers `torch_chunk_gated_delta_rule` (its pure-torch body) on one unpacked row of T tokens
- padfree torch backend on the same unpacked row (cu_seqlens=None), per state scan ("loop", "scan")
- padfree torch backend on a packed row of the same T: documents of seeded lognormal lengths
- padfree fla backend and FLA itself on the packed row (CUDA with FLA importable only)

    python benchmarks/bench_gated_delta.py --device cpu --tokens 4096
    python benchmarks/bench_gated_delta.py --device cuda --tokens 8192 --compile --json out.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time

import torch

from padfree.ops import _backend
from padfree.ops.gated_delta import chunk_gated_delta_rule, torch_backend


def lognormal_lengths(total: int, mean: float, sigma: float, seed: int) -> list[int]:
    """Document lengths (>= 1) drawn from a lognormal of the given mean, cut to sum to `total`."""
    gen = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma**2 / 2  # so that E[length] = mean
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(max(1, round(math.exp(mu + sigma * torch.randn((), generator=gen).item()))))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def make_inputs(args, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    T, H, HV, K = args.tokens, args.heads, args.value_heads or args.heads, args.dim

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q, k, v = randn(1, T, H, K), randn(1, T, H, K), randn(1, T, HV, K)
    # Qwen3.5-like gates: g = -exp(A_log) * softplus(.) in fp32, beta = sigmoid(.) in the model dtype.
    g = (-0.5 * torch.nn.functional.softplus(torch.randn(1, T, HV, generator=gen))).to(device)
    beta = torch.randn(1, T, HV, generator=gen).sigmoid().to(device, dtype)
    return [x.requires_grad_() for x in (q, k, v, g, beta)]


def fwd_bwd(fn, inputs):
    for x in inputs:
        x.grad = None
    o, _ = fn(*inputs)
    o.float().square().mean().backward()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_cases(args, device, offsets):
    scale = args.dim**-0.5
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    hf = inspect.unwrap(_hf_chunk())  # the pure-torch body, even where transformers would route to FLA
    cases = {"transformers chunk, unpacked": lambda q, k, v, g, b: hf(q, k, v, g, b, use_qk_l2norm_in_kernel=True)}

    def ours(cu_host, scan):
        def run(q, k, v, g, b):
            return torch_backend.chunk_gated_delta_rule(
                q, k, v, g, b, scale, None, False, True, cu_host, state_scan=scan
            )

        return torch.compile(run, dynamic=False) if args.compile else run

    for scan in args.state_scan:
        cases[f"padfree torch/{scan}, unpacked"] = ours(None, scan)
        cases[f"padfree torch/{scan}, packed"] = ours(tuple(offsets), scan)
    if device.type == "cuda" and _backend.fla_available():
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_direct

        cases["padfree fla, packed"] = lambda q, k, v, g, b: chunk_gated_delta_rule(
            q, k, v, g, b, use_qk_l2norm_in_kernel=True, cu_seqlens=cu, backend="fla"
        )
        cases["FLA direct, packed"] = lambda q, k, v, g, b: fla_direct(
            q, k, v, g, b, use_qk_l2norm_in_kernel=True, cu_seqlens=cu.clone()
        )
    return cases


def _hf_chunk():
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    return torch_chunk_gated_delta_rule


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int, default=4096, help="row length T")
    p.add_argument("--heads", type=int, default=16, help="query/key heads H")
    p.add_argument("--value-heads", type=int, default=None, help="value heads HV (default: H)")
    p.add_argument("--dim", type=int, default=128, help="head dim K = V")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mean-doc-len", type=float, default=500.0)
    p.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of document lengths")
    p.add_argument("--state-scan", nargs="+", default=["loop", "scan"], choices=["loop", "scan", "auto"])
    p.add_argument("--compile", action="store_true", help="torch.compile the padfree torch backend")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    lengths = lognormal_lengths(args.tokens, args.mean_doc_len, args.sigma, args.seed)
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    mid_chunk = sum(1 for o in offsets[1:-1] if o % torch_backend.CHUNK)
    print(
        f"T={args.tokens} H={args.heads} HV={args.value_heads or args.heads} K=V={args.dim} {args.dtype} on "
        f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}, compile={args.compile}\n"
        f"packed row: {len(lengths)} documents, lengths min/median/max {min(lengths)}/"
        f"{int(statistics.median(lengths))}/{max(lengths)}, {mid_chunk} of {len(lengths) - 1} boundaries inside a chunk"
    )
    inputs = make_inputs(args, device, dtype)
    cases = build_cases(args, device, offsets)
    times: dict[str, list[float]] = {name: [] for name in cases}
    first: dict[str, float] = {}  # the first call: compilation, autotuning, FLA's index caches
    for r in range(args.warmup + args.rounds):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fwd_bwd(fn, inputs)
            sync(device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
            elif r == 0:
                first[name] = time.perf_counter() - start

    base = min(times["transformers chunk, unpacked"])
    rows = []
    print(f"\n{'case':<34}{'best ms':>10}{'median ms':>11}{'us/token':>10}{'vs transformers':>17}{'first s':>9}")
    for name, ts in times.items():
        best, med = min(ts) * 1e3, statistics.median(ts) * 1e3
        rows.append({"case": name, "best_ms": best, "median_ms": med, "all_ms": [t * 1e3 for t in ts],
                     "first_s": first.get(name)})  # fmt: skip
        print(
            f"{name:<34}{best:>10.2f}{med:>11.2f}{best * 1e3 / args.tokens:>10.2f}{base / min(ts):>16.2f}x"
            f"{first.get(name, float('nan')):>9.1f}"
        )
    for scan in args.state_scan:
        un, pk = (min(times[f"padfree torch/{scan}, {kind}"]) for kind in ("unpacked", "packed"))
        print(f"packed / unpacked, torch/{scan}: {pk / un:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "lengths": lengths, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
