"""`padfree train`: check everything, then run the loop; the loop is deterministic and resumable.

Phases:
1. Prepare in memory: tokenizer, data (tokenised, selected, packed), model (patched), optimizer,
   schedule, and the resumed state. Every user error is raised here, before the output dir exists.
2. Write: create the output dir, the token cache, the run's settings.
3. Train: per optimizer step, collate its `grad_accum` packed rows, count their trained tokens
   (host labels: no device sync), and run each micro-batch with num_items_in_batch = that count,
   so the summed losses and gradients equal one big batch's (see padfree.loss). Clip, step.

Exact resume: the weights, AdamW moments, scheduler position and RNG states are restored from
the checkpoint, and the data position follows from the step (padfree.train.data), so a resumed
run repeats the uninterrupted run's arithmetic step for step.
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
from padfree.train.config import TrainConfig, changed_curve_settings, dumps
from padfree.train.data import load_training_data, save_cache
from padfree.train.errors import TrainError
from padfree.train.metrics import MetricsLogger, mfu, peak_memory_mb, read_metrics, truncate_metrics
from padfree.train.model import (
    build_demo_model, demo_base_dir, load_tokenizer, parameter_counts, prepare_model, resolve_device, resolve_dtype,
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
    """AdamW (decay on matrices only) and linear warmup then cosine decay to lr * min_lr_ratio."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * total_steps))

    def factor(step: int) -> float:  # step: optimizer steps taken so far
        if step < warmup:
            return (step + 1) / warmup  # never 0: the first step already learns
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor), warmup


def _rng_state(device: torch.device) -> dict:
    # numpy's global RNG is never used (the data order uses explicitly seeded generators).
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(batch: dict, device: torch.device) -> dict:
    # cu_seq_lens stay on the host: padfree then builds its packed-row metadata without a device sync.
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and not k.startswith("cu_seq") else v
        for k, v in batch.items()
    }


def _describe_model(config: TrainConfig, model, device, dtype) -> str:
    total, trainable = parameter_counts(model)
    what = "embedded tiny Qwen3.5 (random weights)" if config.model is None else config.model
    lora = f", LoRA rank {config.lora_rank}" if config.lora_rank else ""
    return f"model: {what}: {total / 1e6:.1f}M params, {trainable / 1e6:.2f}M trained{lora}; {device}, {dtype}"


def train(
    config: TrainConfig, resume_from: Path | None = None, saved: dict | None = None, out: TextIO | None = None
) -> TrainResult:
    """Run `config` (from padfree.train.load); raises TrainError, before writing anything, on bad input."""
    out = out if out is not None else sys.stdout  # resolved per call, so redirected stdout is honoured
    output_dir = Path(config.output_dir)
    existing = ckpt.previous_run_files(output_dir)
    if existing and resume_from is None and not config.overwrite:
        raise TrainError(
            f"{output_dir} already holds a run ({', '.join(existing[:3])}); pass --resume {output_dir} to continue "
            "it, --overwrite to replace it, or another --output-dir."
        )
    if config.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            raise TrainError("--tensorboard needs the tensorboard package: pip install tensorboard.") from None

    # Phase 1: prepare in memory. Seeded first: LoRA's initial adapter weights draw from torch's RNG.
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = load_tokenizer(config)
    loaded = load_training_data(
        config.data or bundled_path("chat_sample.jsonl"), config.split, tokenizer,
        config.cache_dir, config.max_tokens, config.overlong, config.seed,
    )  # fmt: skip
    stream = loaded.stream
    model = prepare_model(config, tokenizer, device, resume_from)
    total_steps = stream.total_steps(config.epochs, config.grad_accum, config.max_steps)
    optimizer, scheduler, warmup = make_optimizer(model, config, total_steps)
    start_step, state = 0, None
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        if start_step >= total_steps:
            raise TrainError(
                f"{resume_from} is at step {start_step}, the run's last step ({total_steps}); nothing to do "
                "(pass a larger --max-steps to train further)."
            )

    print(_describe_model(config, model, device, dtype), file=out)
    print(f"data: {loaded.source} ({loaded.shape}, {'cached' if loaded.from_cache else 'tokenised'})", file=out)
    stats = stream.plan.stats
    packing = (
        f"packed into {stats.num_rows:,} rows of {stats.budget:,} tokens: {stats.efficiency:.1%} efficiency "
        f"({stats.real_tokens:,} real tokens / {stats.slots:,} slots)"
    )
    for line in loaded.report.lines() + [packing]:
        print(f"  {line}", file=out)
    epochs = total_steps * config.grad_accum / stream.num_rows
    print(
        f"schedule: {total_steps} steps x {config.grad_accum} rows of {config.max_tokens} tokens (~{epochs:.1f} "
        f"epochs); lr {config.lr:g}, {warmup} warmup steps, cosine to {config.lr * config.min_lr_ratio:g}",
        file=out,
    )
    if resume_from is not None:
        print(f"resuming from {resume_from} (step {start_step})", file=out)
        for change in changed_curve_settings(saved or {}, config):
            print(f"  note: changed {change}; the curve will differ from an uninterrupted run", file=out)

    # Phase 2: every check passed; now write.
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

    # Phase 3: train.
    if state is not None:
        _set_rng_state(state["rng"], device)
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    tokens_seen = state["tokens_seen"] if state else 0
    num_params = parameter_counts(model)[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logger = MetricsLogger(output_dir, total_steps, config.log_every, config.tensorboard, out)
    started, last_saved = time.perf_counter(), None
    try:
        for step in range(start_step, total_steps):
            step_start = time.perf_counter()
            positions = stream.step_positions(step, config.grad_accum, config.epochs, config.max_steps)
            rows = [stream.row(p) for p in positions]
            batches = [collate(r, pad_to_multiple_of=config.pad_multiple, pad_token_id=pad_id) for r in rows]
            trained = sum(int(count_trained_tokens(b["labels"])) for b in batches)
            tokens = sum(len(s["input_ids"]) for r in rows for s in r)
            lr = scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), device=device)
            for batch in batches:
                loss = model(**_to_device(batch, device), num_items_in_batch=trained).loss
                loss.backward()
                loss_sum += loss.detach()
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum.item()
            if not math.isfinite(loss_value):
                raise TrainError(f"the loss is {loss_value} at step {step + 1}; lower --lr (now {config.lr:g}).")
            seconds = time.perf_counter() - step_start
            tokens_seen += tokens
            logger.log({
                "step": step + 1, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens,
                "trained_tokens": trained, "tokens_per_s": tokens / seconds,
                "packing_efficiency": tokens / (len(rows) * config.max_tokens),
                "peak_mem_mb": peak_memory_mb(device), "mfu": mfu(num_params, tokens / seconds, device, dtype),
            })  # fmt: skip
            done = step + 1
            if done == total_steps or (config.save_every and done % config.save_every == 0):
                state_out = {
                    "step": done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(device), "tokens_seen": tokens_seen, "padfree_version": padfree.__version__,
                }  # fmt: skip
                last_saved = ckpt.save_checkpoint(output_dir, done, model, tokenizer, state_out, dumps(config))
                ckpt.prune_checkpoints(output_dir, config.keep_last)
    finally:
        logger.close()
    seconds = time.perf_counter() - started
    history = read_metrics(output_dir / "metrics.jsonl")
    result = TrainResult(
        output_dir, last_saved, total_steps, sum(r["tokens"] for r in history), seconds,
        history[0]["loss"], history[-1]["loss"],
    )  # fmt: skip
    _print_summary(result, history, total_steps - start_step, config, out)
    return result


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
