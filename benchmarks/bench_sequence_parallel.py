"""Sequence parallelism on GPUs: bf16 equivalence, per-GPU throughput, and the longest row that trains.

    torchrun --nproc-per-node 2 benchmarks/bench_sequence_parallel.py --out results.jsonl

Stages (each writes JSON lines to --out as it finishes, so a cut-off run keeps what it measured):
1. equivalence: the Qwen3.5-0.8B shape (random weights) on one packed row. Loss and gradients of
   the bf16 sharded run (Ulysses and context) are compared with an fp32 unsharded reference, next
   to the bf16 unsharded run's own error against that reference. Sharding only reorders sums, so
   the sharded error must stay within 2x the unsharded bf16 error (bf16 rounding dominates both).
2. throughput: AdamW training steps, activation checkpointing (--no-checkpointing: off), one GPU at
   L tokens per row vs all GPUs at P * L (the same tokens per GPU, the same documents: a sharded row
   joins P one-GPU rows, and the one GPU times each of them); per-GPU tokens/s of the median
   timed step, and the ratio. Every step's time is in the JSON. --modes takes
   "mode[:collectives[:gdn_exchange]]" setups (ulysses:functional, ulysses::projections), timed in
   that order in one process; --rounds R times them all in turn R times (medians over all rounds,
   and each round's own ratios). --cuda-graph: every setup trains through padfree.CudaGraphTrainStep
   (its warm-up steps include the eager step and the capture), the sharded ones with Ulysses only;
   a setup "SPEC@after" sums the gradients after the backward (overlap_grad_reduce=False), not during it.
   --stream-timing (with --cuda-graph): each round's rows run back to back without a host sync per step, as a
   training loop runs them, timed by CUDA events; otherwise each step is synced and timed alone, which also
   counts its row's host preparation (more for the sharded setups' longer rows).
3. longest row: doubling the row from --long-start tokens per GPU until a step runs out of memory,
   one GPU and P GPUs (--long-setups picks either).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback

import torch
import torch.distributed as dist

import padfree
from padfree.corpus import lognormal_lengths
from padfree.loss import count_trained_tokens
from padfree.parallel import SequenceParallel, reduce_gradients, shard_batch
from padfree.tiny import _realistic_gates

try:
    from padfree.bench.shapes import shape_config
except ImportError:  # older layout: benchmarks/shapes.py
    from shapes import shape_config


VOCAB = {"tiny": 256, "0.8b": 248320, "4b": 248320}


def empty_cache():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device):
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def build(shape: str, dtype, device):
    torch.manual_seed(0)
    from transformers import Qwen3_5ForCausalLM

    with torch.device(device):
        model = Qwen3_5ForCausalLM(shape_config(shape))
    _realistic_gates(model)
    return model.to(dtype).train()


def make_row(total: int, vocab: int, seed: int, median: float | None = None):
    return padfree.collate(make_samples(total, vocab, seed, median))


def make_samples(total: int, vocab: int, seed: int, median: float | None = None) -> list[dict]:
    """Documents of log-normal lengths filling exactly `total` tokens (the last one cut to fit)."""
    median = median or min(1500.0, total / 8)  # several documents in every row
    lengths, filled = [], 0
    for n in lognormal_lengths(4 * total // int(median) + 8, median=median, sigma=1.0, max_len=total, seed=seed):
        n = min(int(n), total - filled)
        if n > 0:
            lengths.append(n)
            filled += n
        if filled == total:
            break
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (n,), generator=g)} for n in lengths]


def throughput_rows(args, setups, world) -> dict[str, tuple[list[dict], list[dict]]]:
    """(warm-up rows, timed rows) per setup, made so that both sides train the same documents: a sharded row is
    `world` one-GPU rows joined, and the one-GPU setup times each of the rows the sharded timed rows join
    (world x steps of them). Rows drawn separately for each length differed in their documents, and
    attention's cost grows with a document's length squared."""
    base = [make_samples(args.tokens_per_gpu, VOCAB[args.shape], seed=10 + i)
            for i in range(world * (args.warmup + args.steps))]  # fmt: skip
    joined = [padfree.collate([doc for part in base[world * j : world * (j + 1)] for doc in part])
              for j in range(args.warmup + args.steps)]  # fmt: skip
    one = [padfree.collate(part) for part in base]
    rows = {}
    for name, sp, _ in setups:
        if sp is None:
            rows[name] = (one[: args.warmup], one[world * args.warmup :])
        else:
            rows[name] = (joined[: args.warmup], joined[args.warmup :])
    return rows


def to(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) and not k.startswith("cu_seq") else v for k, v in batch.items()}


def flat_grads(model):
    return torch.cat([p.grad.float().reshape(-1).cpu() for p in model.parameters()])


def _sum_gradients(group, bucket):
    """DDP comm hook: the sum over the group, not DDP's mean (each rank's loss is its share of the global sum)."""
    return dist.all_reduce(bucket.buffer(), group=group, async_op=True).get_future().then(lambda f: f.value()[0])


def ddp_over(model, group):
    """The model wrapped in DistributedDataParallel over the sequence-parallel `group` with a summing hook: its
    bucketed all-reduces run while the backward still computes, where reduce_gradients waits for the whole
    backward. Steps of the unwrapped model (the one-GPU setup) do not fire DDP's hooks."""
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    ddp.register_comm_hook(group, _sum_gradients)
    return ddp


def run_step(model, batch, sp, device, optimizer=None, ddp=None):
    model.zero_grad(set_to_none=True)
    if sp is None:
        loss = model(**to(batch, device)).loss
    else:
        local, trained = to(shard_batch(batch, sp), device), count_trained_tokens(batch["labels"])
        loss = (ddp or model)(**local, num_items_in_batch=trained).loss
    loss.backward()
    if sp is not None and ddp is None:
        reduce_gradients(model, sp.group)
        loss = loss.detach().clone()
        dist.all_reduce(loss, group=sp.group)
    if optimizer is not None:
        optimizer.step()
    return float(loss.detach())


def emit(out, record):
    if dist.get_rank() == 0:
        print(json.dumps(record), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def stop_if_device_lost(error, out, record):
    """A CUDA fault (illegal address, ...) poisons the process's CUDA context: every later step fails
    and the next collective hangs. Write what was measured and exit instead of going on."""
    if isinstance(error, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(error):
        emit(out, dict(record, aborted=f"{type(error).__name__}: the CUDA context is lost; stopping"))
        os._exit(2)


def progress(started: float, what: str) -> None:
    """Rank 0's timestamped progress line: on a fresh machine this stage ran past 200-240 s twice (twelfth
    session) with nothing in its log to say which part took the time."""
    if dist.get_rank() == 0:
        print(f"[{time.strftime('%H:%M:%S')}] +{time.perf_counter() - started:.0f} s: {what}", flush=True)


def equivalence(args, device, world):
    started = time.perf_counter()
    batch = make_row(args.eq_tokens, VOCAB[args.shape], seed=1)
    model = build(args.shape, torch.float32, device)
    padfree.patch(model, backend="torch")  # the fp32 reference: no FLA autotuning for a dtype used once
    ref_loss = run_step(model, batch, None, device)
    progress(started, "fp32 unsharded reference step")
    ref = flat_grads(model)
    progress(started, "its gradients on the host")
    del model
    empty_cache()
    model = build(args.shape, torch.bfloat16, device)
    runs = {"bf16 unsharded": None, **{f"bf16 sp{world} {m}": m for m in args.modes.split(",")}}
    errors = {}
    for name, mode in runs.items():
        sp = None if mode is None else SequenceParallel.from_spec(dist.group.WORLD, mode)
        padfree.patch(model, backend=args.backend, sequence_parallel=sp)
        try:
            loss = run_step(model, batch, sp, device)
        except Exception as error:  # record and go on: the other setups still say something
            traceback.print_exc()
            errors[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            stop_if_device_lost(error, args.out, {"stage": "equivalence", "partial": errors})
            continue
        progress(started, f"{name} step")
        grads = flat_grads(model)
        errors[name] = {"loss_rel": abs(loss - ref_loss) / abs(ref_loss),
                        "grad_rel": float((grads - ref).norm() / ref.norm())}  # fmt: skip
        progress(started, f"{name} compared")
    base = errors["bf16 unsharded"]
    passed = all("error" not in e and e["grad_rel"] <= 2 * base["grad_rel"] and e["loss_rel"] <= 2 * base["loss_rel"] + 1e-4
                 for e in errors.values())  # fmt: skip
    emit(args.out, {"stage": "equivalence", "shape": args.shape, "tokens": args.eq_tokens,
                    "documents": batch["cu_seq_lens_q"].numel() - 1, "vs_fp32_unsharded": errors, "passed": passed})
    del model
    empty_cache()


def graph_steps(model, optimizer, setups, rows, backend):
    """One CudaGraphTrainStep per setup (--cuda-graph), all on the same model, optimizer and gradients: a replay
    runs what its capture recorded, whatever the model's current patch."""
    from padfree.cuda_graph import CudaGraphTrainStep

    steps = {}
    for name, sp, tokens in setups:
        padfree.patch(model, backend=backend, sequence_parallel=sp)
        max_docs = max(row["cu_seq_lens_q"].numel() - 1 for part in rows[name] for row in part) + 4
        overlap = not name.endswith("@after")
        steps[name] = CudaGraphTrainStep(model, optimizer, tokens, max_docs, eager_steps=1, overlap_grad_reduce=overlap)
    return steps


def stream_timed(run, rows, device) -> list[float]:
    """Each row's step time as a training loop sees it: the rows back to back with no host wait between them (a
    captured step returns its loss on the device), so the host prepares the next row while the GPU runs this one.
    The times are the GPU's, between CUDA events queued at each step's start; a host slower than the GPU shows as
    the GPU waiting inside them. Their sum is checked against the wall time of the whole sequence."""
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(len(rows) + 1)]
    sync(device)
    start = time.perf_counter()
    for mark, row in zip(marks, rows):
        mark.record()
        run(row)
    marks[-1].record()
    sync(device)
    wall = time.perf_counter() - start
    times = [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    if sum(times) > wall * 1.001:
        raise RuntimeError(f"event times sum to {sum(times):.4f} s, more than the {wall:.4f} s wall time")
    return times


def throughput(args, device, world):
    model = build(args.shape, torch.bfloat16, device)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda", capturable=args.cuda_graph)
    ddp = ddp_over(model, dist.group.WORLD) if args.grad_sync == "ddp" else None
    setups = [("1 GPU", None, args.tokens_per_gpu)] + [
        (f"{world} GPUs {m}", SequenceParallel.from_spec(dist.group.WORLD, m.split("@")[0]), args.tokens_per_gpu * world)
        for m in args.modes.split(",")
    ]
    rows = throughput_rows(args, setups, world)
    results = {name: {"row_tokens": tokens, "step_s": [], "round_median_s": []} for name, _, tokens in setups}
    graphed = graph_steps(model, optimizer, setups, rows, args.backend) if args.cuda_graph else {}

    def step(name, sp, row):
        if name in graphed:  # the row whole on every rank: the step keeps this rank's slice
            graphed[name](row)
        else:
            run_step(model, row, sp, device, optimizer, ddp)
    # Rounds: every setup times `steps` steps per round, the setups in turn, so a machine that drifts (clocks,
    # another tenant) moves all of them; the twelfth session saw the one-GPU baseline itself move by 9%.
    for round_index in range(args.rounds):
        for name, sp, tokens in setups:
            result = results[name]
            if "error" in result:
                continue
            padfree.patch(model, backend=args.backend, sequence_parallel=sp)
            # Untimed first: every warm-up row in the first round (compiles, autotuning), one row later (the
            # switch between setups).
            warmup_rows, timed_rows = rows[name]
            untimed = warmup_rows if round_index == 0 else timed_rows[:1]
            step_s = []
            try:
                for row in untimed:
                    step(name, sp, row)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)  # this setup's own peak (params, optimizer state)
                if args.stream_timing and name in graphed:
                    step_s = stream_timed(lambda row: step(name, sp, row), timed_rows, device)
                else:
                    for row in timed_rows:
                        sync(device)
                        start = time.perf_counter()
                        step(name, sp, row)
                        sync(device)
                        step_s.append(time.perf_counter() - start)
            except Exception as error:  # record it (earlier rounds' steps stay in the record) and go on
                traceback.print_exc()
                result["error"] = f"round {round_index}: {type(error).__name__}: {str(error)[:300]}"
                stop_if_device_lost(error, args.out, {"stage": "throughput", "partial": results})
                continue
            result["step_s"] += [round(t, 4) for t in step_s]
            result["round_median_s"].append(round(statistics.median(step_s), 4))
            result["peak_gib"] = max(result.get("peak_gib") or 0, peak_gib(device) or 0) or None
            dist.barrier()
    one = results["1 GPU"]
    for name, r in results.items():
        if "error" in r or "error" in one:
            continue
        # The median step over all rounds: a kernel compiled or autotuned for the first time inside a timed step
        # (the fourth session's context run had a 12 s tilelang compile there) moves one step, not the result.
        median_s = statistics.median(r["step_s"])
        r["tokens_per_s_per_gpu"] = round(r["row_tokens"] / median_s / (1 if name == "1 GPU" else world))
    for name, r in results.items():
        if "tokens_per_s_per_gpu" in r and "tokens_per_s_per_gpu" in one:
            r["per_gpu_vs_1_gpu"] = round(r["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"], 3)
            # the same ratio within each round (the setups of a round ran back to back)
            r["per_round_vs_1_gpu"] = [round(one_s * r["row_tokens"] / (s * one["row_tokens"] * (1 if name == "1 GPU" else world)), 3)
                                       for s, one_s in zip(r["round_median_s"], one["round_median_s"])]  # fmt: skip
    emit(args.out, {"stage": "throughput", "shape": args.shape, "checkpointing": args.checkpointing,
                    "rounds": args.rounds, "grad_sync": args.grad_sync, "cuda_graph": args.cuda_graph,
                    "stream_timing": args.stream_timing,
                    "results": results})  # fmt: skip
    for graph_step in graphed.values():
        graph_step.close()  # before the group goes: see CudaGraphTrainStep.close
    del model, optimizer, ddp, graphed
    empty_cache()


def longest_row(args, device, world):
    model = build(args.shape, torch.bfloat16, device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for setup in args.long_setups.split(","):
        sp = None if setup == "single" else SequenceParallel.from_spec(dist.group.WORLD, args.long_mode)
        name = "1 GPU" if sp is None else f"{world} GPUs {args.long_mode}"
        padfree.patch(model, backend=args.backend, sequence_parallel=sp)
        fits, tokens, limit = 0, args.long_start * (1 if sp is None else world), "--long-max reached"
        while tokens <= args.long_max * (1 if sp is None else world):
            ok = torch.ones((), device=device)
            try:
                run_step(model, make_row(tokens, VOCAB[args.shape], seed=3, median=8000.0), sp, device)
            except torch.OutOfMemoryError:
                ok.zero_()
            model.zero_grad(set_to_none=True)
            empty_cache()
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            if not ok:
                limit = f"out of memory at {tokens} tokens"
                break
            fits = tokens
            emit(args.out, {"stage": "longest_row", "setup": name, "trained_tokens": tokens})
            tokens *= 2
        emit(args.out, {"stage": "longest_row_result", "setup": name, "longest_row": fits, "limit": limit})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.8b")
    parser.add_argument("--out", default="sp_results.jsonl")
    parser.add_argument("--stages", default="equivalence,throughput,longest_row")
    parser.add_argument("--eq-tokens", type=int, default=8192)
    parser.add_argument("--tokens-per-gpu", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setup and round")
    parser.add_argument("--rounds", type=int, default=1, help="throughput: the setups in turn, this many times")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--long-start", type=int, default=65536)
    parser.add_argument("--long-max", type=int, default=1 << 20)
    parser.add_argument("--long-mode", default="ulysses")
    parser.add_argument("--long-setups", default="single,sp", help="which longest-row searches: single (1 GPU), sp")
    parser.add_argument("--modes", default="ulysses,context",
                        help="sequence-parallel setups to compare: mode[:collectives[:gdn_exchange]], e.g. "
                             "ulysses:functional, ulysses::projections (SequenceParallel.from_spec); with --cuda-graph, "
                             "SPEC@after sums the gradients after the backward instead of during it")
    parser.add_argument("--backend", default="auto", help="Gated DeltaNet kernels: auto, torch, fla")
    parser.add_argument("--grad-sync", choices=("reduce", "ddp"), default="reduce",
                        help="throughput stage, sharded setups: the gradients' sum over the group after the backward "
                             "(padfree.parallel.reduce_gradients) or during it (DDP with a summing comm hook)")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="activation checkpointing in the throughput stage (both the 1-GPU and the sharded runs)")
    parser.add_argument("--stream-timing", action="store_true",
                        help="with --cuda-graph: time the captured setups' rows back to back, without a host sync "
                             "per step (a training loop's view; CUDA events per step), instead of one synced step "
                             "at a time (which also counts each row's host preparation)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="throughput stage: every setup through padfree.CudaGraphTrainStep (Ulysses setups only)")
    args = parser.parse_args()
    if args.cuda_graph and args.grad_sync == "ddp":
        parser.error("--cuda-graph sums the gradients inside the captured step; drop --grad-sync ddp")
    if args.stream_timing and not args.cuda_graph:
        parser.error("--stream-timing times captured steps (an eager step waits for its loss on the host); add --cuda-graph")
    if "@" in args.modes and not (args.cuda_graph and all(m.partition("@")[2] in ("", "after") for m in args.modes.split(","))):
        parser.error(f"--modes {args.modes}: the only suffix is @after, for --cuda-graph runs")
    if not set(args.long_setups.split(",")) <= {"single", "sp"}:
        parser.error(f"--long-setups {args.long_setups}: a comma list of single, sp")
    if torch.cuda.is_available():
        dist.init_process_group("nccl")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:  # a CPU smoke run of the script itself (--shape tiny)
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    world = dist.get_world_size()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    emit(args.out, {"stage": "meta", "device": name, "world": world,
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip
    try:
        for stage in args.stages.split(","):
            {"equivalence": equivalence, "throughput": throughput, "longest_row": longest_row}[stage](args, device, world)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
