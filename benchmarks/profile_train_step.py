"""Where a padfree training step's time goes on the GPU: kernel table and GPU-busy fraction.

    python benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --out prof.txt
    torchrun --nproc-per-node 2 benchmarks/profile_train_step.py --sp-mode context --out prof.txt

Under torchrun the row is split over all processes by sequence parallelism (`--sp-mode`), each
process keeping `--row-tokens` tokens (so the row holds world x row-tokens); rank 0 prints, and
every rank writes its own table (a collective's kernel time is mostly waiting for the latest rank,
so the ranks' tables side by side show which one is late). `--trace DIR` adds each rank's profiled
step as a gzipped Chrome trace (chrome://tracing, Perfetto) for the timeline.
`--device cpu` (gloo) is a smoke run of the script itself: no sync audit, CPU activity only.

Prints the step time, the summed kernel time (GPU busy; the rest is host overhead or syncs), the
host-device syncs of one step (`torch.cuda.set_sync_debug_mode`, counted by source line: each one
drains the GPU's queue, so the host can no longer run ahead), and the top kernels by self CUDA
time. Random weights, AdamW (fused), one packed row per step; `--precision bf16` keeps the weights
in bf16, `bf16-mixed` keeps them in fp32 under bf16 autocast (what `padfree train` does on CUDA), `fp32`
is what `padfree bench` and `padfree train` use on CPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import os
import shutil
import time
import warnings

import torch
import torch.distributed as dist
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import padfree
from padfree.bench.shapes import shape_config
from padfree.checkpointing import enable_checkpointing
from padfree.corpus import lognormal_lengths
from padfree.cuda_graph import CudaGraphTrainStep
from padfree.loss import count_trained_tokens
from padfree.parallel import SequenceParallel, reduce_gradients, shard_batch
from padfree.tiny import _realistic_gates

MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="0.8b")
    parser.add_argument("--row-tokens", type=int, default=8192)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--precision", choices=("bf16", "bf16-mixed", "fp32"), default="bf16")
    parser.add_argument("--backend", default="auto", help="Gated DeltaNet kernels: auto, torch, fla")
    parser.add_argument("--elementwise-backend", default="auto", help="norms and MLPs: auto, torch (upstream's), fla")
    parser.add_argument("--sp-mode", default="auto",
                        help="under torchrun: ulysses, context or auto, optionally :collectives (ulysses:functional)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiles, autotuning)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="run the step as padfree.CudaGraphTrainStep (also sharded, Ulysses): captured in the "
                             "warm-up, then replayed; the kernel table is then the graph's kernels")  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="profile.txt", help="rank 0's table; under torchrun rank r > 0 writes OUT.rankR")
    parser.add_argument("--trace", help="also write each rank's profiled step as a gzipped Chrome trace into this folder")
    parser.add_argument("--shapes", action="store_true",
                        help="also the ops with the most kernel time (CPU: host time) by input shapes, which tell the "
                             "small aten kernels apart (eager steps only: a replayed CUDA graph has no ops), then "
                             "the same ops by the Python lines that called them (a forward op's stack; a backward "
                             "op's is the autograd node it ran in)")
    parser.add_argument("--python-profile", help="also run 3 steps under cProfile and write the Python functions "
                        "taking the host's time (by own time and by cumulative time) to this file")
    args = parser.parse_args()
    device, sp = setup(args.device, args.sp_mode)
    world = 1 if sp is None else sp.size
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    from transformers import Qwen3_5ForCausalLM

    config = shape_config(args.shape)
    with torch.device(device):
        model = Qwen3_5ForCausalLM(config)
    _realistic_gates(model)
    mixed = args.precision == "bf16-mixed"
    model = (model if mixed or args.precision == "fp32" else model.to(torch.bfloat16)).train()
    if args.checkpointing:
        enable_checkpointing(model)
    padfree.patch(model, backend=args.backend, sequence_parallel=sp, elementwise_backend=args.elementwise_backend)
    if args.cuda_graph and (not cuda or args.warmup < 2):
        parser.error("--cuda-graph needs CUDA and --warmup >= 2 (eager, then capture)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=cuda, capturable=args.cuda_graph)
    row_tokens = args.row_tokens * world
    lengths = [int(n) for n in lognormal_lengths(64 * world, median=600, sigma=1.0, max_len=row_tokens, seed=0)]
    g = torch.Generator().manual_seed(0)
    samples, total = [], 0
    for n in lengths:
        n = min(n, row_tokens - total)
        if n > 0:
            samples.append({"input_ids": torch.randint(3, config.vocab_size, (n,), generator=g)})
            total += n
    batch = padfree.collate(samples, pad_to=row_tokens)
    kwargs = {}
    whole_row = batch  # what the captured step takes on every rank (it keeps its slice)
    if sp is not None:
        kwargs["num_items_in_batch"] = count_trained_tokens(batch["labels"])
        batch = shard_batch(batch, sp)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) and not k.startswith("cu_seq") else v for k, v in batch.items()}
    graph_step = None
    if args.cuda_graph:
        graph_step = CudaGraphTrainStep(model, optimizer, row_tokens, len(whole_row["cu_seq_lens_q"]) - 1,
                                        autocast_dtype=torch.bfloat16 if mixed else None)  # fmt: skip

    def step():
        if graph_step is not None:
            graph_step(whole_row)  # the row is refilled from the host each step, as in training
            return
        with torch.autocast(device.type, dtype=torch.bfloat16) if mixed else contextlib.nullcontext():
            loss = model(**batch, **kwargs).loss
        loss.backward()
        if sp is not None:
            reduce_gradients(model, sp.group)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    steps = 3
    for _ in range(steps):
        step()
    synchronize(device)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    if args.python_profile:
        python_profile(step, device, args.python_profile)
    syncs = sync_sources(step) if cuda else collections.Counter()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities, record_shapes=args.shapes, with_stack=args.shapes) as prof:
        step()
        synchronize(device)
    events = prof.key_averages()
    # kernels only: the aten ops that launch them report the same time again as their own self time
    kernel_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3
    launches = sum(e.count for e in events if e.device_type == DeviceType.CUDA)
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    parallel = "" if sp is None else f", {world} ranks {sp.layer_modes or args.sp_mode} ({world * args.row_tokens}-token row)"
    lines = [
        f"shape {args.shape}, {args.row_tokens} tokens per rank{parallel}, checkpointing {args.checkpointing}, "
        f"backend {args.backend}, elementwise {args.elementwise_backend}, {name}"
        f"{', one CUDA graph per step' if args.cuda_graph else ''}",
        f"step {step_ms:.1f} ms ({args.row_tokens / step_ms * 1e3:,.0f} tok/s per rank); kernels {kernel_ms:.1f} ms "
        f"(GPU busy {kernel_ms / step_ms:.0%} of the unprofiled step); precision {args.precision}",
        f"kernels launched in one step: {launches}; host-device syncs in one step: {sum(syncs.values())}",
        *(f"  {n:4d} x {where}" for where, n in syncs.most_common(15)),
        events.table(sort_by=sort_by, row_limit=40, max_name_column_width=70),
    ]
    if cuda:  # where the host's time goes when the GPU waits for it (GPU busy well below 100%)
        lines += ["host time by op (self CPU):", events.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70)]
    if args.shapes:
        by_shape = prof.key_averages(group_by_input_shape=True)
        lines += ["ops by input shapes (--shapes):", by_shape.table(sort_by=sort_by, row_limit=40, max_name_column_width=50)]
        # The small aten ops (copies, cat, elementwise) by shape: each shape is too small for the table above,
        # together they were 15-25 ms of a step (eleventh and twelfth sessions, docs/benchmarks.md)
        # (own lines: EventList.table of a filtered list fails on torch 2.11 computing its percentages)
        small = [e for e in by_shape if e.key.startswith("aten::") and e.key not in MATMULS]
        time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
        small.sort(key=time_of, reverse=True)
        lines += ["aten ops other than matmuls, by input shapes (--shapes): self ms, calls, op, input shapes"]
        lines += [f"{time_of(e) / 1e3:9.3f} {e.count:6d}  {e.key:28s} {e.input_shapes}" for e in small[:80]]
        lines += ["the same ops by the Python lines that called them (--shapes): self ms, calls, op, input shapes, "
                  "then the innermost lines of padfree, transformers or FLA"]
        lines += by_caller(prof, time_of)
    text = "\n".join(lines)
    rank = 0 if sp is None else dist.get_rank()
    if rank == 0:
        print(text)
    # Every rank's own table: a collective's kernel time on one rank is mostly waiting for the others,
    # so comparing ranks shows which one is late.
    with open(args.out if rank == 0 else f"{args.out}.rank{rank}", "w") as f:
        f.write(text)
    if args.trace:
        os.makedirs(args.trace, exist_ok=True)
        path = os.path.join(args.trace, f"trace_rank{rank}.json")
        prof.export_chrome_trace(path)
        with open(path, "rb") as raw, gzip.open(path + ".gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        os.remove(path)
    if sp is not None:
        if graph_step is not None:
            graph_step.close()  # before the group goes: see CudaGraphTrainStep.close
        dist.destroy_process_group()


def by_caller(prof, time_of, rows: int = 60) -> list[str]:
    """The non-matmul aten ops grouped by op, input shapes and caller: the innermost Python lines of padfree,
    transformers or FLA above the op, or for a backward op run by autograd the node it ran in (MulBackward0).
    Built from each event's parents (FunctionEvent.stack stays empty on torch 2.13 here)."""
    keep = ("padfree/", "transformers/", "/fla/")
    groups = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if not e.name.startswith("aten::") or e.name in MATMULS:
            continue
        parent, callers = e.cpu_parent, []
        if parent is not None and parent.name.startswith("aten::"):
            continue  # counted with the outermost aten op (copy_ inside to(), fill_ inside zeros)
        while parent is not None and len(callers) < 3:
            name = parent.name
            autograd_node = name.endswith(("Backward", "Backward0")) and "evaluate_function" not in name
            if autograd_node or any(k in name for k in keep):
                callers.append(name)
            parent = parent.cpu_parent
        group = groups[(e.name, str(e.input_shapes), tuple(callers))]
        group[0] += time_of(e) if not e.cpu_children else _self_and_children(e, time_of)
        group[1] += 1
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0], reverse=True)
    out = []
    for (name, shapes, callers), (t, n) in ordered[:rows]:
        out.append(f"{t / 1e3:9.3f} {n:6d}  {name:24s} {shapes}")
        out += [f"{'':18s}{c}" for c in callers or ["(no padfree, transformers or FLA frame)"]]
    return out


def _self_and_children(event, time_of) -> float:
    """An aten op's time with the aten ops it called (to() -> _to_copy -> copy_): one line per outer op."""
    return time_of(event) + sum(_self_and_children(c, time_of) for c in event.cpu_children)


def python_profile(step, device, path: str, steps: int = 3) -> None:
    """Host time by Python function over `steps` steps (cProfile): which wrappers, launchers and checks the
    host spends the step in when the GPU waits for it. cProfile roughly doubles Python's cost, so read the
    shares, not the absolute times."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    synchronize(device)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    out.write(f"cProfile of {steps} steps\n")
    stats.sort_stats("tottime").print_stats(60)
    stats.sort_stats("cumulative").print_stats(80)
    with open(path, "w") as f:
        f.write(out.getvalue())


def setup(device_name: str, sp_mode: str):
    """(device, SequenceParallel over all processes or None): torchrun sets WORLD_SIZE."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return torch.device(device_name), None
    cuda = device_name == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return device, SequenceParallel.from_spec(dist.group.WORLD, sp_mode)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sync_sources(step) -> collections.Counter:
    """The synchronising CUDA calls of one step, counted by the Python line that made them."""
    counts = collections.Counter()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            counts[f"{w.filename}:{w.lineno}"] += 1
    return counts


if __name__ == "__main__":
    main()
