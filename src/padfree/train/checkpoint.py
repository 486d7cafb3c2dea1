"""Checkpoints that a kill can never leave looking complete, and finding the newest complete one.

Layout of `<output_dir>/checkpoint-<step>/`:
    config.json, model.safetensors, ... `save_pretrained` of the model (the LoRA adapter with --lora-rank)
    tokenizer files                     `save_pretrained` of the tokenizer
    training_state.pt                   optimizer, scheduler, RNG states, step and token counters
    train_config.json                   the run's resolved settings (what `--resume` inherits)
    COMPLETE                            written last; a folder without it is never resumed from

Atomicity: everything is written into `.tmp-checkpoint-<step>-<pid>/` in the same parent, every
file and the folder are fsynced, COMPLETE is written and fsynced, and only then is the folder
renamed into place with `os.replace` (atomic within one filesystem) and the parent fsynced. A kill
at any point leaves either the old state or the new complete folder, plus at worst a `.tmp-*`
folder that is ignored and removed at the next save.

Distributed runs: every rank gathers the full (unsharded) weights and optimizer state onto rank 0's
CPU, rank 0 alone writes the folder, and the other ranks wait for it (padfree.train.distributed.on_main).
The optimizer state is stored unsharded and keyed by parameter name (the format of
torch.distributed.checkpoint.state_dict's full_state_dict), in every run: a checkpoint resumes on
any number of processes, one included. Resuming reads the folder on every rank, so --output-dir must
be on a filesystem all nodes share.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from padfree.train.errors import TrainError

COMPLETE = "COMPLETE"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TEMP_PREFIX = ".tmp-checkpoint-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        _fsync_path(path)
    _fsync_path(folder)


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    torch.save(state, folder / STATE_FILE)


def _write_marker(folder: Path, step: int) -> None:
    marker = folder / COMPLETE
    marker.write_text(json.dumps({"step": step, "time": time.time()}) + "\n")
    _fsync_path(marker)


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder, its marker first: a kill mid-delete leaves it incomplete, not half-there."""
    (folder / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temps(output_dir: Path) -> None:
    for path in output_dir.glob(_TEMP_PREFIX + "*"):
        shutil.rmtree(path, ignore_errors=True)


def optimizer_state(model, optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name, on CPU (rank 0's; {} on other ranks).
    Under FSDP2 this is a collective: every rank must call it."""
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, saved: dict[str, Any], distributed: bool) -> None:
    """Restore `optimizer_state`'s output into an optimizer over plain or FSDP2-sharded parameters."""
    groups = saved.get("param_groups") or [{}]
    if groups[0].get("params") and isinstance(groups[0]["params"][0], int):
        # Keyed by position: written by padfree before names were used; loads only unsharded.
        if distributed:
            raise TrainError(
                "this checkpoint's optimizer state predates multi-process resume; resume it in one process first "
                "(padfree train --resume ... without torchrun), then continue from that run's next checkpoint."
            )
        optimizer.load_state_dict(saved)
        return
    set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))


def rng_state(device: torch.device, distributed: bool) -> dict:
    """torch, Python and CUDA RNG states. numpy's global RNG is never used (the data order uses
    explicitly seeded generators). Under torchrun rank 0's state is saved and every rank restores
    it: all ranks are seeded alike and draw alike."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        # One process per GPU reads only its own device (reading all would start a context on each).
        state["cuda"] = [torch.cuda.get_rng_state(device)] if distributed else torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: torch.device, distributed: bool) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        if distributed:
            torch.cuda.set_rng_state(state["cuda"][0], device)
        else:
            torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path, step: int, model, tokenizer, state: dict[str, Any], config_json: str,
    model_state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint-<step> atomically (see the module docstring); returns its path.
    `model_state_dict`: the gathered full weights of a sharded model (None: the model's own)."""
    final = output_dir / f"checkpoint-{step}"
    temp = output_dir / f"{_TEMP_PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        temp.mkdir(parents=True)
        model.save_pretrained(temp, state_dict=model_state_dict, safe_serialization=True)
        tokenizer.save_pretrained(temp)
        _write_state(temp, state)
        (temp / CONFIG_FILE).write_text(config_json)
        _fsync_tree(temp)
        _write_marker(temp, step)
        _fsync_path(temp)
        if final.exists():  # a checkpoint of this step from before a resume: replace it
            old = output_dir / f"{_TEMP_PREFIX}{step}-old-{os.getpid()}"
            (final / COMPLETE).unlink(missing_ok=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(temp, final)
        _fsync_path(output_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in output_dir, oldest first."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / COMPLETE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    if keep_last > 0:
        for _, path in complete_checkpoints(output_dir)[:-keep_last]:
            _remove(path)


def find_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint folder, or the newest complete one inside an output dir."""
    path = Path(path)
    if (path / COMPLETE).is_file():
        return path
    if not path.is_dir():
        raise TrainError(f"--resume {path}: no such folder; pass a checkpoint folder or a run's output dir.")
    found = complete_checkpoints(path)
    if found:
        return found[-1][1]
    if _NAME.match(path.name):
        raise TrainError(
            f"--resume {path}: this checkpoint is incomplete (no {COMPLETE} marker: its write was interrupted); "
            f"pass its output dir {path.parent} to resume from the newest complete checkpoint."
        )
    raise TrainError(f"--resume {path}: no complete checkpoint-<step> folder in it; was the run saved (--save-every)?")


def read_saved_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / CONFIG_FILE).read_text())


def read_state(checkpoint: Path) -> dict[str, Any]:
    # weights_only: the state holds only tensors, numbers, strings and containers of them.
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def previous_run_files(output_dir: Path) -> list[str]:
    """Names in output_dir that a previous run wrote (empty for a new or unrelated folder)."""
    if not output_dir.is_dir():
        return []
    return sorted(
        p.name for p in output_dir.iterdir()
        if _NAME.match(p.name) or p.name.startswith(_TEMP_PREFIX) or p.name in ("metrics.jsonl", CONFIG_FILE)
    )  # fmt: skip


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite: remove what a previous run wrote (checkpoints, metrics, logs); the token cache stays."""
    for name in previous_run_files(output_dir):
        path = output_dir / name
        _remove(path) if path.is_dir() else path.unlink()
    for name in ("tensorboard", "base-model"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
