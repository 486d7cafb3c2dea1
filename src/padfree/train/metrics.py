"""Per-step training metrics: console lines, `<output_dir>/metrics.jsonl`, TensorBoard (optional).

Fields of each metrics.jsonl record (one per optimizer step; in a torchrun run, rank 0 writes them,
and every count covers the rows of all ranks):
    step                 optimizer step, 1-based
    loss                 summed CE over the step's trained tokens / their count (all micro-batches, all ranks)
    lr, grad_norm        learning rate used by this step; total gradient norm before clipping
    tokens               real (non-padding) tokens in the step's packed rows
    trained_tokens       tokens with a training target (the loss denominator)
    tokens_per_s         real tokens / wall time of the step (the whole run's throughput, not one GPU's)
    packing_efficiency   real tokens / (rows * --max-tokens)
    peak_mem_mb          CUDA: max allocated by tensors; CPU: the process's peak RSS; the largest over ranks
    mfu                  model FLOPs utilisation on CUDA with bf16 (None elsewhere, or on an unknown GPU):
                         6 * params * tokens_per_s / (GPUs * one GPU's peak dense bf16 FLOP/s). 6N counts a
                         forward and backward matmul per parameter and ignores attention's T^2 term;
                         for MoE models N is all parameters, which overstates the work per token.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s; matched in order against the device name.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def mfu(
    num_params: int, tokens_per_s: float, device: torch.device, dtype: torch.dtype, num_gpus: int = 1
) -> float | None:
    peak = peak_bf16_flops(device)
    if peak is None or dtype != torch.bfloat16:
        return None
    return 6 * num_params * tokens_per_s / (num_gpus * peak)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep records up to `last_step` (a resume recomputes the steps after its checkpoint); atomic."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(line + "\n" for line in kept))
    os.replace(temp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _console_line(record: dict[str, Any], total_steps: int) -> str:
    width = len(str(total_steps))
    line = (
        f"step {record['step']:>{width}}/{total_steps}  loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
        f"grad {record['grad_norm']:.3f}  {record['tokens_per_s']:,.0f} tok/s  "
        f"packing {record['packing_efficiency']:.1%}  mem {record['peak_mem_mb']:,.0f} MB"
    )
    if record.get("mfu") is not None:
        line += f"  mfu {record['mfu']:.1%}"
    return line


class MetricsLogger:
    """Appends one record per step to metrics.jsonl (flushed: a kill loses at most the current step)."""

    def __init__(self, output_dir: Path, total_steps: int, log_every: int, tensorboard: bool, out: TextIO):
        self.total_steps, self.log_every, self.out = total_steps, log_every, out
        self.file = (output_dir / "metrics.jsonl").open("a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # checked importable before training

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, record["step"])
        step = record["step"]
        if step == 1 or step % self.log_every == 0 or step == self.total_steps:
            print(_console_line(record, self.total_steps), file=self.out, flush=True)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


class NullLogger:
    """The logger of ranks other than 0: metrics are written once, by rank 0."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
