"""The Gated DeltaNet conv, forward + backward, side by side in one process: FLA's Triton kernel, padfree's own
(padfree.ops.conv1d.triton_kernels) and padfree's torch backend, on one packed bench row.

    python3 benchmarks/gpu/bench_conv.py --json out.json

Shapes: 8,192 tokens; channels of the 0.8b shape (6,144 = 2 x 16 x 128 + 16 x 128) and the ~4B shape
(8,192 = 2 x 16 x 128 + 32 x 128); width 4, bias-free as Qwen3.5's conv, silu; bf16 activations, fp32
weights (bf16-mixed) and bf16 weights (the bench's bf16 model). The row's documents are the bench's row with
the most documents (padfree.bench.train_step.make_workload). Each backend's output and gradients are first
compared with the naive oracle in fp32 (RMS-relative errors printed), then timed: GPU kernel time per
forward + backward (torch.profiler, mean of 10, with the top kernels), and wall time (median of 7 runs of 20
calls, CUDA events), which on this host includes launch cost.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from padfree.bench.train_step import make_workload
from padfree.check import rms_relative_error
from padfree.ops.conv1d import causal_conv1d, naive


def _row_lengths() -> list[int]:
    workload = make_workload(1000, 8192, steps=8, warmup=3, median_len=300.0, seed=0)
    row = max(workload.rows, key=len)
    lengths = [len(workload.samples[i]) for i in row]
    return lengths + [8192 - sum(lengths)] if sum(lengths) < 8192 else lengths


def _run(backend, x, w, cu, host, dy):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = causal_conv1d(x, w, None, activation="silu", cu_seqlens=cu, cu_seqlens_cpu=host, backend=backend)
    y.backward(dy)
    return y, x.grad, w.grad


def _kernels(backend, x, w, cu, host, dy) -> tuple[float, dict[str, float]]:
    """GPU kernel time of one forward + backward (ms, mean of 10 under torch.profiler) and per kernel name."""
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(10):
            _run(backend, x, w, cu, host, dy)
        torch.cuda.synchronize()
    per_kernel = {e.key[:60]: e.self_device_time_total / 10 / 1e3 for e in prof.key_averages() if e.self_device_time_total}
    return sum(per_kernel.values()), per_kernel


def _time(backend, x, w, cu, host, dy) -> float:
    """Wall time of one forward + backward (ms, CUDA events; includes the host's launch cost where it shows)."""
    for _ in range(3):
        _run(backend, x, w, cu, host, dy)
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            _run(backend, x, w, cu, host, dy)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 20)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    lengths = _row_lengths()
    host = tuple([0] + torch.tensor(lengths).cumsum(0).tolist())
    cu = torch.tensor(host, dtype=torch.int32, device="cuda")
    results = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; row of {len(lengths)} documents, 8,192 tokens")
    for channels in (6144, 8192):
        for weight_dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(1, 8192, channels, device="cuda", generator=gen).bfloat16()
            w = (torch.randn(channels, 4, device="cuda", generator=gen) * 0.5).to(weight_dtype)
            dy = torch.randn(1, 8192, channels, device="cuda", generator=gen).bfloat16()
            xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
            yr, _ = naive.causal_conv1d(xr, wr, None, "silu", None, False, cu)
            yr.backward(dy.float())
            reference = (yr.detach(), xr.grad, wr.grad)
            for backend in ("fla", "triton", "torch"):
                outs = _run(backend, x, w, cu, host, dy)
                errors = {n: rms_relative_error(r, o.float()) for n, r, o in zip(("y", "dx", "dw"), reference, outs)}
                ms = _time(backend, x, w, cu, host, dy)
                kernel_ms, per_kernel = _kernels(backend, x, w, cu, host, dy)
                row = {"channels": channels, "weight_dtype": str(weight_dtype), "backend": backend,
                       "fwd_bwd_wall_ms": ms, "fwd_bwd_kernel_ms": kernel_ms, "kernels_ms": per_kernel,
                       "errors_vs_fp32_oracle": errors}  # fmt: skip
                results.append(row)
                print(f"  D={channels} weights {str(weight_dtype)[6:]:8s} {backend:6s} kernels {kernel_ms:6.3f} ms, "
                      f"wall {ms:6.3f} ms fwd+bwd   " + "  ".join(f"{n} err {e:.1e}" for n, e in errors.items()))
                for name, t in sorted(per_kernel.items(), key=lambda kv: -kv[1])[:4]:
                    print(f"      {t:6.3f} ms  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"lengths": lengths, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
