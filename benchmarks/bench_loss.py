"""Peak memory and time of the summed causal-LM CE: padfree's chunked path vs full logits, side by side.

Shape letters: T tokens, H hidden size, V vocabulary.

"chunked" is padfree's loss with PyTorch's softmax ops; with --with-fla, "chunked_fla" is the same
loss with FLA's cross-entropy kernels (softmax_backend="fla", padfree's CUDA default when FLA is
installed) and "fla_fused" FLA's own fused linear cross-entropy. All paths compute
loss = sum CE(hidden @ W.T, targets) and d(loss)/d(hidden, W), forward + backward.
"full" is what transformers does: bf16 logits from the lm_head, `.float()`, F.cross_entropy.
Memory is the peak above what was allocated before the call (inputs), so it includes the returned
gradients (d(hidden) [T, H] and d(W) [V, H] in the input dtype) for both paths:
  cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats.
  cpu:  the process's peak RSS (VmHWM, reset through /proc/self/clear_refs); large tensors are
        mmap'ed by glibc, so RSS tracks them. The analytic peak of the chunked op is printed too.
The two paths' losses and gradients are also compared (RMS-relative error) so a run doubles as a
large-shape correctness check on the device.

  python benchmarks/bench_loss.py --device cuda                               # H100, Qwen3.5 shape
  python benchmarks/bench_loss.py --device cuda --T 8192 --with-fla --skip-full # + FLA's softmax kernels
  python benchmarks/bench_loss.py --device cpu --T 2048 --V 32768 --dtype fp32 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from padfree.loss_chunked import DEFAULT_BUDGET_BYTES, chunk_rows_for_budget, chunked_linear_cross_entropy

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def full_logits_ce(hidden_TH, weight_VH, targets_T):
    logits_TV = F.linear(hidden_TH, weight_VH)
    return F.cross_entropy(logits_TV.float(), targets_T, reduction="sum")


def chunked_ce(hidden_TH, weight_VH, targets_T, chunk_size, budget, softmax_backend="torch"):
    return chunked_linear_cross_entropy(
        hidden_TH, weight_VH, targets_T, chunk_size=chunk_size, memory_budget_bytes=budget,
        softmax_backend=softmax_backend,
    )


def fla_fused_ce(hidden_TH, weight_VH, targets_T):
    """flash-linear-attention's Triton fused linear cross-entropy (a candidate, not what padfree uses)."""
    from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss

    return fused_linear_cross_entropy_loss(hidden_TH, targets_T, weight_VH, reduction="sum")


def analytic_chunked_peak(T, H, V, dtype, rows, device) -> int:
    """The op's own transient bytes (padfree.loss_chunked docstring), excluding inputs and saved grads."""
    e = torch.empty((), dtype=dtype).element_size()
    rows = min(rows, T)
    # d(weight): a [V, H] temporary only on CPU in half precision (padfree.loss_chunked.add_weight_grad)
    weight_temporary = 0 if dtype == torch.float32 or device.type == "cuda" else V * H * e
    return max(rows * V * 8, rows * V * e + weight_temporary)


class PeakMemory:
    """Peak bytes above the level at entry, on cuda (allocator) or cpu (process RSS high-water mark)."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _rss_hwm() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
            self.start = self._rss_hwm()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = self._rss_hwm() - self.start


def run_once(fn, hidden_TH, weight_VH, targets_T):
    loss = fn(hidden_TH, weight_VH, targets_T)
    grads = torch.autograd.grad(loss, (hidden_TH, weight_VH))
    return loss.detach(), grads


def bench(name, fn, args, repeats):
    device = args[0].device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        with PeakMemory(device) as memory:
            result = run_once(fn, *args)  # also the warm-up
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            run_once(fn, *args)
            sync()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError as error:
        return dict(impl=name, error=f"out of memory: {str(error).splitlines()[0]}"), None
    record = dict(impl=name, time_ms_median=1e3 * statistics.median(times), time_ms_min=1e3 * min(times))
    record.update(peak_bytes=memory.peak, peak_gib=memory.peak / 2**30, repeats=repeats)
    return record, result


def rms_rel(reference, actual) -> float:
    reference, actual = reference.double(), actual.double()
    return ((actual - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt().clamp(min=1e-300)).item()


def compare(reference, actual) -> dict | None:
    """RMS-relative error of loss, d(hidden), d(weight) of two `run_once` results (None if one failed)."""
    if reference is None or actual is None:
        return None
    names = ("loss", "dhidden", "dweight")
    refs, gots = (reference[0], *reference[1]), (actual[0], *actual[1])
    return {n: rms_rel(r, g) for n, r, g in zip(names, refs, gots)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--H", type=int, default=1024)
    parser.add_argument("--V", type=int, default=248320)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk; default: from --budget-bytes")
    parser.add_argument("--budget-bytes", type=int, default=DEFAULT_BUDGET_BYTES)
    parser.add_argument("--ignored-fraction", type=float, default=0.3, help="share of targets set to -100")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-logits baseline (too big)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--with-fla", action="store_true", help="also time FLA's fused linear cross-entropy")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    gen = torch.Generator(device=device).manual_seed(0)
    hidden_TH = torch.randn(args.T, args.H, device=device, generator=gen).to(dtype).requires_grad_()
    weight_VH = (torch.randn(args.V, args.H, device=device, generator=gen) * args.H**-0.5).to(dtype).requires_grad_()
    targets_T = torch.randint(0, args.V, (args.T,), device=device, generator=gen)
    targets_T[torch.rand(args.T, device=device, generator=gen) < args.ignored_fraction] = -100
    inputs = (hidden_TH, weight_VH, targets_T)

    rows = args.chunk_size or chunk_rows_for_budget(args.V, args.budget_bytes)
    chunked, chunked_result = bench(
        "chunked", lambda h, w, t: chunked_ce(h, w, t, args.chunk_size, args.budget_bytes), inputs, args.repeats
    )
    peak = analytic_chunked_peak(args.T, args.H, args.V, dtype, rows, device)
    chunked.update(chunk_rows=rows, analytic_op_peak_bytes=peak)
    records = [chunked]
    if not args.skip_full:
        full, full_result = bench("full_logits", full_logits_ce, inputs, args.repeats)
        records.append(full)
        chunked["rms_rel_error_vs_full"] = compare(full_result, chunked_result)
    if args.with_fla:
        fla_rows = args.chunk_size or chunk_rows_for_budget(args.V, args.budget_bytes, hidden_TH.element_size())
        chunked_fla, chunked_fla_result = bench(
            "chunked_fla", lambda h, w, t: chunked_ce(h, w, t, args.chunk_size, args.budget_bytes, "fla"), inputs,
            args.repeats,
        )
        chunked_fla.update(chunk_rows=fla_rows, analytic_op_peak_bytes=fla_rows * args.V * hidden_TH.element_size())
        chunked_fla["rms_rel_error_vs_chunked"] = compare(chunked_result, chunked_fla_result)
        fla, fla_result = bench("fla_fused", fla_fused_ce, inputs, args.repeats)
        fla["rms_rel_error_vs_chunked"] = compare(chunked_result, fla_result)
        records += [chunked_fla, fla]
    report = dict(
        shape=dict(T=args.T, H=args.H, V=args.V), dtype=args.dtype, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__, threads=torch.get_num_threads(), results=records,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"T={args.T} H={args.H} V={args.V} {args.dtype} on {report['device_name']} (torch {torch.__version__})")
    for r in records:
        if "error" in r:
            print(f"  {r['impl']:12s} {r['error']}")
            continue
        extra = ""
        if "chunk_rows" in r:
            extra = f"  rows={r['chunk_rows']} analytic op peak {r['analytic_op_peak_bytes'] / 2**30:.2f} GiB"
        print(f"  {r['impl']:12s} {r['time_ms_median']:9.1f} ms  peak {r['peak_gib']:7.2f} GiB{extra}")
    if chunked.get("rms_rel_error_vs_full"):
        print("  chunked vs full, RMS-relative:", {k: f"{v:.1e}" for k, v in chunked["rms_rel_error_vs_full"].items()})


if __name__ == "__main__":
    main()
