"""`padfree train`: check everything, then run the loop; the loop is deterministic and resumable.

Phases:
1. Prepare in memory: tokenizer, data (tokenised, selected, packed), model (patched), optimizer,
   schedule, and the resumed state. Every user error is raised here, before the output dir exists.
2. Write: create the output dir, the token cache, the run's settings.
3. Train: per optimizer step, collate its `grad_accum` packed rows, count their trained tokens
   (host labels: no device sync), and run each micro-batch with num_items_in_batch = that count,
   so the summed losses and gradients equal one big batch's (see padfree.loss). Clip, step.
   With --cuda-graph the same arithmetic is captured once and replayed (padfree.cuda_graph).

Exact resume: the weights, AdamW moments, scheduler position and RNG states are restored from
the checkpoint, and the data position follows from the step (padfree.train.data), so a resumed
run repeats the uninterrupted run's arithmetic step for step.

Under torchrun (padfree.train.distributed) a step takes dp_size * grad_accum rows, dp rank r the
r-th block of grad_accum; the sp ranks of a dp group shard its rows. The trained-token count is
all-reduced over dp before the first forward, gradients are summed over all ranks by FSDP2, and the
loss is each rank's share summed. Rank 0 alone prints, logs and writes; the ranks agree after
every phase that can fail on one of them, so an error stops all of them instead of hanging.

With --cuda-graph under torchrun the processes form one Ulysses group, without data parallelism:
the weights stay whole on every rank (no FSDP2) and the captured step sums the gradients and the
loss over the group itself (padfree.train.graph).
"""

from __future__ import annotations

import importlib
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

import padfree
from padfree.collate import collate
from padfree.corpus import bundled_path
from padfree.loss import count_trained_tokens
from padfree.train import checkpoint as ckpt
from padfree.train import distributed, graph
from padfree.train.config import TrainConfig, changed_curve_settings, dumps, saved_setting
from padfree.train.data import load_training_data, save_cache
from padfree.train.distributed import Dist
from padfree.train.errors import TrainError
from padfree.train.metrics import MetricsLogger, NullLogger, mfu, peak_memory_mb, read_metrics, truncate_metrics
from padfree.train.model import (
    build_demo_model, demo_base_dir, load_tokenizer, parameter_counts, prepare_model, resolve_device, resolve_precision,
)


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path
    steps: int
    tokens: int
    seconds: float
    first_loss: float
    last_loss: float


def make_optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW (decay on matrices only) and linear warmup then cosine decay to lr * min_lr_ratio.

    With --cuda-graph: fused and capturable, with the learning rate in a device tensor, which the
    schedule updates in place (a float would be baked into the captured graph)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if config.cuda_graph:
        lr = torch.tensor(config.lr, device=params[0].device)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True, capturable=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * total_steps))

    def factor(step: int) -> float:  # step: optimizer steps taken so far
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first step already learns
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor), warmup


def _to_device(batch: dict, device: torch.device) -> dict:
    # cu_seq_lens stay on the host: padfree then builds its packed-row metadata without a device sync.
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and not k.startswith("cu_seq") else v
        for k, v in batch.items()
    }


def _describe_model(config: TrainConfig, model, device, precision) -> str:
    total, trainable = parameter_counts(model)
    what = "embedded tiny Qwen3.5 (random weights)" if config.model is None else config.model
    lora = f", LoRA rank {config.lora_rank}" if config.lora_rank else ""
    return f"model: {what}: {total / 1e6:.1f}M params, {trainable / 1e6:.2f}M trained{lora}; {device}, {_precision_text(precision)}"


def _precision_text(precision) -> str:
    if precision.autocast:
        return f"{precision.name} ({str(precision.weights).removeprefix('torch.')} weights, " \
               f"{str(precision.compute).removeprefix('torch.')} compute)"
    return str(precision.weights).removeprefix("torch.")


def train(
    config: TrainConfig, resume_from: Path | None = None, saved: dict | None = None, out: TextIO | None = None
) -> TrainResult:
    """Run `config` (from padfree.train.load); raises TrainError, before writing anything, on bad input.
    Under torchrun every rank calls this; rank 0 prints, logs and writes (padfree.train.distributed)."""
    out = out if out is not None else sys.stdout  # resolved per call, so redirected stdout is honoured
    world_size, rank, _ = distributed.world_from_env()
    out = out if rank == 0 else distributed.SILENT
    graph.check_world(config, world_size)
    output_dir = Path(config.output_dir)
    existing = ckpt.previous_run_files(output_dir)
    if existing and resume_from is None and not config.overwrite:
        raise TrainError(
            f"{output_dir} already holds a run ({', '.join(existing[:3])}); pass --resume {output_dir} to continue "
            "it, --overwrite to replace it, or another --output-dir."
        )
    if saved is not None and saved_setting(saved, "cuda_graph") != config.cuda_graph:
        # The two modes build different AdamW kernels (fused and capturable, or foreach), and the optimizer state
        # carries that choice; switching on resume is not supported.
        was = "without" if config.cuda_graph else "with"  # the saved run's mode: the other one
        raise TrainError(
            f"{resume_from} was trained {was} --cuda-graph; resume it the same way (the setting changes the "
            "optimizer's kernel, whose state the checkpoint holds), or start a new run."
        )
    if config.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard.") from None

    # Phase 1: prepare in memory. Seeded first: LoRA's initial adapter weights draw from torch's RNG.
    torch.manual_seed(config.seed)
    d = distributed.setup(config.sp_degree, config.sp_mode, resolve_device(config.device), config.sp_collectives)
    try:
        result = _train(config, resume_from, saved, out, d)
        distributed.finish(d)
        return result
    finally:
        distributed.teardown(d)


def _train(config: TrainConfig, resume_from: Path | None, saved: dict | None, out: TextIO, d: Dist) -> TrainResult:
    output_dir = Path(config.output_dir)
    device = d.device
    precision = resolve_precision(config.dtype, device)
    rows_per_step = config.grad_accum * d.dp_size
    error = None
    try:  # every rank prepares the same; one failing must not leave the others waiting (distributed.agree)
        tokenizer = load_tokenizer(config)
        loaded = load_training_data(
            config.data or bundled_path("chat_sample.jsonl"), config.split, tokenizer,
            config.cache_dir, config.max_tokens, config.overlong, config.seed,
        )  # fmt: skip
        stream = loaded.stream
        model = prepare_model(config, tokenizer, device, resume_from, d.sp)
        total_steps = stream.total_steps(config.epochs, rows_per_step, config.max_steps)
        state = ckpt.read_state(resume_from) if resume_from is not None else None
        start_step = state["step"] if state is not None else 0
        if start_step >= total_steps:
            raise TrainError(
                f"{resume_from} is at step {start_step}, the run's last step ({total_steps}); nothing to do "
                "(pass a larger --max-steps to train further)."
            )
    except Exception as caught:  # noqa: BLE001 - re-raised by agree
        error = caught
    distributed.agree(d, error, "while preparing the run")
    description = _describe_model(config, model, device, precision)
    num_params = parameter_counts(model)[0]
    if not config.cuda_graph:  # the captured step keeps the weights whole on every rank of its group (_graph_step)
        model = distributed.shard_model(model, d)
    optimizer, scheduler, warmup = make_optimizer(model, config, total_steps)
    if state is not None:
        ckpt.load_optimizer_state(model, optimizer, state["optimizer"], d.distributed)
        scheduler.load_state_dict(state["scheduler"])
        if config.cuda_graph:
            graph.lr_in_tensors(optimizer)
    graph_step = graph.graph_step(config, model, optimizer, stream, precision)  # checks before anything is written

    print(description, file=out)
    if d.distributed:
        weights = "FSDP2 over all of them"
        if graph_step is not None:
            weights = "weights whole on each, gradients summed in the graph"
        print(
            f"parallel: {d.world_size} processes = {d.dp_size} data-parallel x {d.sp_size} sequence-parallel"
            f"{f' ({config.sp_mode})' if d.sp_size > 1 else ''}; {weights}",
            file=out,
        )
    if graph_step is not None:
        print(f"cuda graph: the step is captured after {graph_step.eager_steps} eager step and replayed (padfree."
              f"cuda_graph); rows padded to {config.max_tokens:,} tokens, at most {graph_step.row.max_docs} "
              "documents each", file=out)  # fmt: skip
    print(f"data: {loaded.source} ({loaded.shape}, {'cached' if loaded.from_cache else 'tokenised'})", file=out)
    stats = stream.plan.stats
    packing = (
        f"packed into {stats.num_rows:,} rows of {stats.budget:,} tokens: {stats.efficiency:.1%} efficiency "
        f"({stats.real_tokens:,} real tokens / {stats.slots:,} slots)"
    )
    for line in loaded.report.lines() + [packing]:
        print(f"  {line}", file=out)
    epochs = total_steps * rows_per_step / stream.num_rows
    per_rank = f" ({config.grad_accum} per data-parallel rank)" if d.distributed else ""
    print(
        f"schedule: {total_steps} steps x {rows_per_step} rows{per_rank} of {config.max_tokens} tokens (~{epochs:.1f} "
        f"epochs); lr {config.lr:g}, {warmup} warmup steps, cosine to {config.lr * config.min_lr_ratio:g}",
        file=out,
    )
    if resume_from is not None:
        print(f"resuming from {resume_from} (step {start_step})", file=out)
        for change in changed_curve_settings(saved or {}, config):
            print(f"  note: changed {change}; the curve will differ from an uninterrupted run", file=out)
        if state.get("dp_size", 1) != d.dp_size:
            print(f"  note: {state.get('dp_size', 1)} -> {d.dp_size} data-parallel ranks changes the rows of each "
                  "step; the curve will differ from an uninterrupted run", file=out)  # fmt: skip

    # Phase 2: every check passed; now rank 0 writes.
    def write_run_files() -> None:
        created = not output_dir.exists()
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            if config.overwrite and resume_from is None:
                ckpt.clear_previous_run(output_dir)
            ckpt.remove_stale_temps(output_dir)
            save_cache(loaded, config.cache_dir)
            truncate_metrics(output_dir / "metrics.jsonl", start_step)
            (output_dir / ckpt.CONFIG_FILE).write_text(dumps(config))
            if config.lora_rank and config.model is None and not demo_base_dir(config).is_dir():
                build_demo_model(tokenizer, config.seed).save_pretrained(demo_base_dir(config))
        except BaseException:
            if created:
                shutil.rmtree(output_dir, ignore_errors=True)
            raise

    distributed.on_main(d, write_run_files, "writing the run's files")

    # Phase 3: train.
    if state is not None:
        ckpt.set_rng_state(state["rng"], device, d.distributed)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    tokens_seen = state["tokens_seen"] if state else 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logger = NullLogger() if not d.is_main else MetricsLogger(
        output_dir, total_steps, config.log_every, config.tensorboard, out
    )
    started, last_saved, logged = time.perf_counter(), None, []
    try:
        for step in range(start_step, total_steps):
            step_start = time.perf_counter()
            positions = stream.step_positions(step, rows_per_step, config.epochs, config.max_steps)
            batches, trained, tokens = _rank_batches(stream, positions, config, d, pad_id)
            lr = float(scheduler.get_last_lr()[0])
            loss_sum = torch.zeros((), device=device)
            if graph_step is not None:  # the same arithmetic, replayed (padfree.cuda_graph)
                for batch in batches:
                    loss_sum += graph_step.accumulate(batch, num_items_in_batch=trained)
                grad_norm = graph_step.update()
            else:
                for batch in batches:
                    inputs = _to_device(distributed.sp_inputs(batch, d, pad_id), device)
                    with torch.autocast(device.type, dtype=precision.compute, enabled=precision.autocast):
                        loss = model(**inputs, num_items_in_batch=trained).loss
                    loss.backward()
                    loss_sum += loss.detach()
                max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            # Each rank holds its tokens' share; the captured step's loss is already summed over its sp group.
            loss_value = distributed.sum_over(loss_sum, d, None if graph_step is None else "dp").item()
            if not math.isfinite(loss_value):
                raise TrainError(f"the loss is {loss_value} at step {step + 1}; lower --lr (now {config.lr:g}).")
            seconds = time.perf_counter() - step_start
            tokens, trained = int(tokens), int(trained)
            tokens_seen += tokens
            record = {
                "step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": float(distributed.local_value(grad_norm)),
                "tokens": tokens, "trained_tokens": trained, "tokens_per_s": tokens / seconds,
                "packing_efficiency": tokens / (len(positions) * config.max_tokens),
                "peak_mem_mb": distributed.max_over_ranks(peak_memory_mb(device), d),
                "mfu": mfu(num_params, tokens / seconds, device, precision.compute, d.world_size),
            }  # fmt: skip
            logger.log(record)
            logged.append(record)
            done = step + 1
            if done == total_steps or (config.save_every and done % config.save_every == 0):
                last_saved = _save(config, output_dir, done, model, tokenizer, optimizer, d, {
                    "step": done, "scheduler": graph.plain_scheduler_state(scheduler),
                    "rng": ckpt.rng_state(device, d.distributed),
                    "tokens_seen": tokens_seen, "dp_size": d.dp_size, "padfree_version": padfree.__version__,
                })  # fmt: skip
    finally:
        logger.close()
        if graph_step is not None:  # before the process group goes: see CudaGraphTrainStep.close
            graph_step.close()
    seconds = time.perf_counter() - started
    history = read_metrics(output_dir / "metrics.jsonl") if d.is_main else logged
    result = TrainResult(
        output_dir, last_saved, total_steps, sum(r["tokens"] for r in history), seconds,
        history[0]["loss"], history[-1]["loss"],
    )  # fmt: skip
    _print_summary(result, history, total_steps - start_step, config, out)
    return result


def _rank_batches(stream, positions: range, config: TrainConfig, d: Dist, pad_id: int):
    """This rank's collated micro-batches of a step, and the step's trained and real token counts
    over all dp ranks (ints in one process; device tensors, all-reduced before the first forward,
    under torchrun)."""
    batches, trained, tokens = [], 0, 0
    for position in distributed.rank_positions(positions, config.grad_accum, d):
        row = stream.row(position if position is not None else positions[0])
        if config.cuda_graph:  # the captured step's fixed row length
            batch = collate(row, pad_to=config.max_tokens, pad_token_id=pad_id)
        else:
            batch = collate(row, pad_to_multiple_of=config.pad_multiple, pad_token_id=pad_id)
        if position is None:  # a filler micro-batch (see rank_positions): it runs, and trains nothing
            batch["labels"] = torch.full_like(batch["labels"], -100)
        else:
            tokens += sum(len(s["input_ids"]) for s in row)
        trained += int(count_trained_tokens(batch["labels"]))
        batches.append(batch)
    if d.distributed:
        trained, tokens = distributed.sum_over(torch.tensor([trained, tokens], device=d.device), d, "dp")
    return batches, trained, tokens


def _save(config: TrainConfig, output_dir: Path, step: int, model, tokenizer, optimizer, d: Dist, state: dict) -> Path:
    """checkpoint-<step>: every rank gathers the full weights and optimizer state, rank 0 writes."""
    model_state = distributed.full_model_state(model, d)
    state = {**state, "optimizer": ckpt.optimizer_state(model, optimizer)}

    def write() -> None:
        ckpt.save_checkpoint(output_dir, step, model, tokenizer, state, dumps(config), model_state)
        ckpt.prune_checkpoints(output_dir, config.keep_last)

    distributed.on_main(d, write, f"writing checkpoint-{step}")
    return output_dir / f"checkpoint-{step}"


def _print_summary(result: TrainResult, history: list[dict], steps_run: int, config: TrainConfig, out: TextIO) -> None:
    ran_tokens = sum(r["tokens"] for r in history[-steps_run:])
    tail = [r["loss"] for r in history[-10:]]
    print(
        f"done: {result.steps} steps, {result.tokens:,} tokens; this run {steps_run} steps in {result.seconds:.1f} s "
        f"({ran_tokens / result.seconds:,.0f} tok/s)\n"
        f"loss: first {result.first_loss:.4f} -> last {result.last_loss:.4f} "
        f"(mean of the last {len(tail)} steps {sum(tail) / len(tail):.4f})\n"
        f"model: {result.checkpoint}",
        file=out,
    )
    if config.lora_rank:
        print(f"  LoRA adapter: peft.PeftModel.from_pretrained(base_model, {str(result.checkpoint)!r})", file=out)
    else:
        print(f"  load it: AutoModelForCausalLM.from_pretrained({str(result.checkpoint)!r})", file=out)
