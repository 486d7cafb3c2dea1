"""padfree's conv kernels (padfree.ops.conv1d.triton_kernels) at explicit meta-parameters: which token tile,
channel block and warp count each of the three kernels runs fastest at, and what a bf16 dz (between the
backward's two passes) saves. Written to choose the kernels' tuning space from measurements (eighteenth
session: in the 0.8b step the dz pass took 362 us for ~400 MB, a third of the H100's bandwidth).

    python3 benchmarks/gpu/bench_conv_variants.py --json out.json
    python3 benchmarks/gpu/bench_conv_variants.py --dz-only   # the dz pass's two kernels, bf16 dz

--dz-only sweeps the dz kernel's sub-tiles (BT), sub-tiles per program (STEPS), blocks and warps, bf16 dz. It
chose the looped dz kernel over the 64-token tile kernel it replaced (248 us at its best, H100, 2026-11-27: the
results folder docs/results/2026-11-27-h100-f, BP_dz_variants.log).

The bench row of benchmarks/gpu/bench_conv.py (8,192 tokens, its 83 documents), 0.8b channels split as
q, k, v (2,048 each), width 4, silu, bf16 activations and weights (the bench's bf16 model). Each variant's
outputs are first compared with the autotuned kernels' (max abs difference printed), then timed with
triton.testing.do_bench (median, ms). The bytes each kernel must move give its share of the GPU's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import triton
from triton.testing import do_bench

from padfree.ops.conv1d import triton_kernels as tk

sys.path.insert(0, "benchmarks/gpu")
from bench_conv import _row_lengths  # noqa: E402

TILES = (16, 32, 64, 128)
BLOCKS = ((32, 2), (64, 2), (64, 4), (128, 4), (128, 8), (256, 8))  # (channels per program, warps)
# --dz-only: the dz kernel's sweep
DZ_SUBTILES, DZ_STEPS = (16, 32, 64), (4, 8, 16)
DZ_BLOCKS = ((32, 1), (32, 2), (64, 2), (64, 4), (128, 4))
# The dz kernel keeps W fp32 accumulators and W bf16 taps of [BT, BD] live: beyond 32 elements of a tile
# per thread that is > 200 registers, which spills (the tile kernel's slow configurations did).
DZ_MAX_ELEMENTS_PER_THREAD = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--channels", type=int, default=6144)
    parser.add_argument("--dz-only", action="store_true", help="only the dz kernel's sweep, bf16 dz")
    args = parser.parse_args()
    lengths = _row_lengths()
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    L, D, W = 8192, args.channels, 4
    widths = (D // 3, D // 3, D - 2 * (D // 3))
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(L, D, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(D, W, device="cuda", generator=gen) * 0.5).bfloat16()
    dys = tuple(torch.randn(L, d, device="cuda", generator=gen).bfloat16() for d in widths)
    # the autotuned kernels' results: what every variant must reproduce
    ref_dz, ref_dw, _ = tk.launch_backward_dz(tk._backward_dz, x, w, None, cu, True, widths, dys, torch.float32)
    bytes_of = {"forward": 2 * L * D * 2, "dz_fp32": L * D * (2 + 2 + 4), "dz_bf16": L * D * 6,
                "dx_fp32": L * D * (4 + 2), "dx_bf16": L * D * 4}  # fmt: skip
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"L={L}, D={D} as {widths}, W={W}, {len(lengths)} documents")  # fmt: skip
    rows = []

    def record(kernel: str, BT: int, BD: int, warps: int, fn, check, steps: int = 1) -> None:
        name = f"{kernel:14s} BT={BT:3d} STEPS={steps:2d} BD={BD:3d} warps={warps}"
        try:
            err = check()
            ms = do_bench(fn, warmup=10, rep=50)
        except Exception as e:  # noqa: BLE001 - a config that does not compile (registers) is a result too
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:80]}")
            return
        gbps = bytes_of[kernel] / (ms * 1e-3) / 1e9
        print(f"{name}: {ms * 1e3:7.1f} us  {gbps:6.0f} GB/s  max|diff| {err:.2e}")
        rows.append(dict(kernel=kernel, BT=BT, STEPS=steps, BD=BD, warps=warps, us=ms * 1e3, gbps=gbps, max_diff=err))

    def dz_check(dz):
        """The larger max abs difference from the autotuned kernel's: of dz (its fp32 one) or of the summed dweight."""
        got, dw_tiles, _ = dz()
        return max((got.float() - ref_dz).abs().max().item(), (dw_tiles.sum(0) - ref_dw.sum(0)).abs().max().item())

    if args.dz_only:
        time_dz_kernels(x, w, cu, widths, dys, record, dz_check)
        report(rows, args.json, lengths, top=8)
        return
    ref_parts = tk.launch_forward(tk._forward, x, w, None, cu, True, widths)
    ref_dx = tk.launch_backward_dx(tk._backward_dx, w, cu, ref_dz, x.dtype)
    for BT in TILES:
        for BD, warps in BLOCKS:
            meta = dict(BT=BT, BD=BD, num_warps=warps)
            fwd = lambda: tk.launch_forward(tk._forward_kernel, x, w, None, cu, True, widths, **meta)  # noqa: E731
            record("forward", BT, BD, warps, fwd,
                   lambda: max((p - r).abs().max().item() for p, r in zip(fwd(), ref_parts)))  # fmt: skip
            for dz_dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                steps = max(1, tk.DZ_TOKENS // BT)  # the dz kernel's own sweep is --dz-only's
                dz = lambda: tk.launch_backward_dz(  # noqa: E731
                    tk._backward_dz_kernel, x, w, None, cu, True, widths, dys, dz_dtype, STEPS=steps, **meta)
                record(f"dz_{tag}", BT, BD, warps, dz, lambda: dz_check(dz), steps=steps)
                dz_in = ref_dz.to(dz_dtype)
                dx = lambda: tk.launch_backward_dx(tk._backward_dx_kernel, w, cu, dz_in, x.dtype, **meta)  # noqa: E731
                record(f"dx_{tag}", BT, BD, warps, dx, lambda: (dx().float() - ref_dx.float()).abs().max().item())
    report(rows, args.json, lengths, top=1)


def time_dz_kernels(x, w, cu, widths, dys, record, dz_check) -> None:
    """The dz pass in bf16 over its sweep (spilling tiles left out: DZ_MAX_ELEMENTS_PER_THREAD)."""
    for BT in DZ_SUBTILES:
        for BD, warps in DZ_BLOCKS:
            if BT * BD > DZ_MAX_ELEMENTS_PER_THREAD * 32 * warps:
                continue
            for steps in DZ_STEPS:
                meta = dict(BT=BT, STEPS=steps, BD=BD, num_warps=warps)
                dz = lambda: tk.launch_backward_dz(  # noqa: E731
                    tk._backward_dz_kernel, x, w, None, cu, True, widths, dys, torch.bfloat16, **meta)
                record("dz_bf16", BT, BD, warps, dz, lambda: dz_check(dz), steps=steps)


def report(rows: list[dict], json_path: str | None, lengths: list[int], top: int) -> None:
    """The `top` fastest configurations of each kernel, then the rows as JSON if asked."""
    print(f"fastest {top} per kernel:")
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        for r in sorted((r for r in rows if r["kernel"] == kernel), key=lambda r: r["us"])[:top]:
            print(f"  {kernel:14s} {r['us']:7.1f} us at BT={r['BT']} STEPS={r['STEPS']} BD={r['BD']} "
                  f"warps={r['warps']} ({r['gbps']:.0f} GB/s)")  # fmt: skip
    if json_path:
        with open(json_path, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows, lengths=lengths), f, indent=1)


if __name__ == "__main__":
    main()
