"""The gated delta rule's GPU kernels at the bench's layer shapes: FLA 0.6's Triton (+ tilelang) kernels against
FlashQLA's fused TileLang kernels (the Qwen team's `flash_qla` package, which FLA 0.6 dispatches to by itself
when it is installed), forward + backward, with each one's error against an fp32 reference.

    python3 benchmarks/gpu/bench_gdn_backends.py --json out.json

Written (nineteenth session) to decide whether FlashQLA earns a place in padfree: FLA's kernels take ~22 ms of
the 0.8b step's ~119 ms on an H100, and FlashQLA claims 2-3x forward, 2x backward over them on Hopper.

Variants, each fwd + bwd through autograd with `use_qk_l2norm_in_kernel=True` (as padfree's layers call it):
- fla: FLA's public function with its FlashQLA dispatch off (FLA_FLASH_QLA=0): Triton, tilelang's dqkwg.
- flash_qla: flash_qla.chunk_gated_delta_rule with its automatic intra-card context parallelism (FLA's
  dispatch calls it so), and flash_qla_nocp with auto_cp=False (no host-side decision, fixed shapes).
Rows: the bench's 8,192-token row of lognormal documents (median 600); one 8,192-token document; the bench
row with trailing empty documents, as padfree's fixed-shape (CUDA graph) rows end. Shapes: 0.8b (16 q/k and
16 v heads) and the ~4B shape (16 and 32), head dims 128.

Reference: padfree's torch backend in fp32 on the GPU, on the same bf16-rounded inputs. Error: RMS of the
difference over RMS of the reference, per output and gradient. Time: GPU kernel time per call from
torch.profiler (the wall time of one isolated call, printed too, is mostly its host overhead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
from triton.testing import do_bench

from padfree.check import rms_relative_error
from padfree.ops.gated_delta import chunk_gated_delta_rule as padfree_gdr

sys.path.insert(0, "benchmarks/gpu")
from bench_conv import _row_lengths  # noqa: E402

SHAPES = {"0.8b": (16, 16), "4b": (16, 32)}  # (q/k heads, v heads)
DIM = 128
NAMES = ("o", "dq", "dk", "dv", "dg", "dbeta")


def _rows(tokens: int) -> dict[str, list[int]]:
    bench = _row_lengths()
    assert sum(bench) == tokens, (sum(bench), tokens)
    return {"bench_row": bench, "one_document": [tokens], "bench_row_empty_tail": bench + [0, 0, 0]}


def _inputs(tokens: int, heads: int, value_heads: int, seed: int = 0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, tokens, heads, DIM, device="cuda", generator=gen).bfloat16()
    k = torch.randn(1, tokens, heads, DIM, device="cuda", generator=gen).bfloat16()
    v = torch.randn(1, tokens, value_heads, DIM, device="cuda", generator=gen).bfloat16()
    # decays as a trained layer's: -exp(A_log) softplus(a), mostly within (-1, 0)
    g = -torch.nn.functional.softplus(torch.randn(1, tokens, value_heads, device="cuda", generator=gen) - 2)
    beta = torch.rand(1, tokens, value_heads, device="cuda", generator=gen).bfloat16()
    do = torch.randn(1, tokens, value_heads, DIM, device="cuda", generator=gen).bfloat16()
    return (q, k, v, g, beta), do


def _call(variant: str, leaves, cu: torch.Tensor, cu_host: torch.Tensor):
    q, k, v, g, beta = leaves
    scale = DIM**-0.5
    if variant == "reference":
        return padfree_gdr(q, k, v, g, beta, scale, cu_seqlens=cu, use_qk_l2norm_in_kernel=True, backend="torch")[0]
    if variant == "fla":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        os.environ["FLA_FLASH_QLA"] = "0"
        return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True,
                                      cu_seqlens=cu.long(), cu_seqlens_cpu=cu_host)[0]
    import flash_qla

    return flash_qla.chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, use_qk_l2norm_in_kernel=True,
                                            cu_seqlens=cu.long(), auto_cp=variant == "flash_qla")[0]


def _fwd_bwd(variant, inputs, do, cu, cu_host, fp32=False):
    leaves = [x.detach().float() if fp32 else x.detach() for x in inputs]
    leaves = [x.requires_grad_() for x in leaves]
    o = _call(variant, leaves, cu, cu_host)
    o.backward(do.float() if fp32 else do)
    return [o.detach().float()] + [x.grad.float() for x in leaves]


def _kernel_ms(fn, iters: int = 10) -> float:
    """GPU kernel time per call (the profiler's kernels summed): the wall time of one layer's call is its
    host overhead here (nothing else is queued), which a training step hides behind other layers' kernels."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.device_time for e in kernels) / iters / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--variants", default="fla,flash_qla,flash_qla_nocp")
    args = parser.parse_args()
    variants = args.variants.split(",")
    results = []
    for shape, (heads, value_heads) in SHAPES.items():
        inputs, do = _inputs(args.tokens, heads, value_heads)
        for row, lengths in _rows(args.tokens).items():
            offsets = [0] + torch.tensor(lengths).cumsum(0).tolist()
            cu_host = torch.tensor(offsets, dtype=torch.long)
            cu = cu_host.to("cuda", torch.int32)
            # padfree's torch backend refuses empty documents; they hold no tokens, so the reference drops them
            real = torch.tensor(sorted(set(offsets)), dtype=torch.int32, device="cuda")
            reference = _fwd_bwd("reference", inputs, do, real, real.cpu().long(), fp32=True)
            for variant in variants:
                entry = {"shape": shape, "row": row, "documents": len(lengths), "variant": variant}
                try:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    out = _fwd_bwd(variant, inputs, do, cu, cu_host)
                    entry["errors"] = {n: rms_relative_error(r, o) for n, r, o in zip(NAMES, reference, out)}
                    entry["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                    step = lambda: _fwd_bwd(variant, inputs, do, cu, cu_host)  # noqa: E731
                    fwd = lambda: _call(variant, [x.detach().requires_grad_() for x in inputs], cu, cu_host)  # noqa: E731
                    entry["ms"], entry["fwd_ms"] = _kernel_ms(step), _kernel_ms(fwd)
                    entry["wall_ms"] = do_bench(step, warmup=5, rep=40)
                except Exception as error:  # report and go on: one variant failing must not hide the others
                    entry["error"] = f"{type(error).__name__}: {error}"[:500]
                results.append(entry)
                errors = entry.get("errors", {})
                worst = max(errors.values()) if errors else math.nan
                print(f"{shape:5s} {row:22s} {variant:15s} kernels: fwd+bwd {entry.get('ms', math.nan):7.3f} ms  fwd "
                      f"{entry.get('fwd_ms', math.nan):7.3f} ms  (wall {entry.get('wall_ms', math.nan):6.3f})  peak {entry.get('peak_mib', math.nan):7.1f} MiB  "
                      f"worst err {worst:.2e}  {entry.get('error', '')}", flush=True)
                if errors:
                    print("      " + "  ".join(f"{n} {e:.2e}" for n, e in errors.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
