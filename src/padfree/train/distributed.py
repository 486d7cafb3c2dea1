"""`padfree train` on many processes (torchrun): process setup, the mesh, FSDP2, the data split, reductions.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. Without torchrun, or with one process, nothing here
creates a process group: every helper is a no-op and the run is the single-process run, unchanged.

Mesh axes (a named DeviceMesh, passed explicitly in `Dist`, never a global):
    dp   data parallel: each dp rank trains its own packed rows of every step
    sp   sequence parallel: the sp ranks of one dp group split the tokens of the same row
world size = dp * sp; --sp-degree sets sp and dp is what is left.

Gradients are SUMMED over all ranks, never averaged. Each rank's loss is its local summed
cross-entropy / N, N the trained-token count of the step's rows on all dp ranks, all-reduced over dp
before the first forward (the sp ranks of a dp group share its rows, so they are not counted twice).
The step's loss, sum_k S_k / N, is then the sum of the ranks' losses, and its gradient the sum of
theirs (see padfree.loss). FSDP2 averages by default (divides by its group size): here it divides by 1.

Sharding: FSDP2 (`fully_shard`) over the flattened (dp, sp) mesh, so every rank holds 1/world of each
parameter, gradient and AdamW moment; units are the decoder layers (the model's `_no_split_modules`),
then the root (embeddings, final norm, lm_head). On CUDA over NCCL, and on CPU over gloo too: FSDP2
works with gloo in torch 2.13 (no plain all-reduce fallback is needed), but gloo lacks NCCL's
PREMUL_SUM, so reductions are forced to plain SUM (`set_force_sum_reduction_for_comms`), on both.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from padfree.parallel import SequenceParallel, init_mesh, shard_batch
from padfree.train.errors import TrainError

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in the run; `mesh` is None in a single-process run."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: DeviceMesh | None = None
    sp: SequenceParallel | None = None  # over mesh["sp"], when --sp-degree > 1

    @property
    def distributed(self) -> bool:
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        return self.mesh["dp"].size() if self.mesh is not None else 1

    @property
    def dp_rank(self) -> int:
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0

    @property
    def sp_size(self) -> int:
        return self.mesh["sp"].size() if self.mesh is not None else 1


class _Silent(io.TextIOBase):
    """Console of ranks other than 0: progress and the summary are printed once, by rank 0."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


SILENT = _Silent()


def world_from_env() -> tuple[int, int, int]:
    """(WORLD_SIZE, RANK, LOCAL_RANK) as torchrun sets them; (1, 0, 0) without torchrun."""
    env = os.environ
    return int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))


def check_world(sp_degree: int, world_size: int) -> None:
    """Refuse, before any process group or file exists, a --sp-degree the launch cannot honour."""
    if world_size % sp_degree == 0:
        return
    if world_size == 1:
        raise TrainError(
            f"--sp-degree {sp_degree} splits each row over {sp_degree} processes, but this is one process; launch "
            f"it with torchrun: torchrun --nproc-per-node {sp_degree} -m padfree.cli train ... (or drop --sp-degree)."
        )
    raise TrainError(
        f"--sp-degree {sp_degree} must divide the number of processes, but this run has {world_size}; launch a "
        f"multiple of {sp_degree} processes (torchrun --nproc-per-node times --nnodes), or pass an --sp-degree "
        f"that divides {world_size}."
    )


def setup(sp_degree: int, sp_mode: str, device: torch.device, sp_collectives: str = "c10d") -> Dist:
    """The process group (gloo on CPU, NCCL on CUDA with device LOCAL_RANK) and the (dp, sp) mesh."""
    world_size, rank, local_rank = world_from_env()
    check_world(sp_degree, world_size)
    if world_size == 1:
        return Dist(device=device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainError(
                f"LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} GPUs; start at most "
                "one process per GPU (torchrun --nproc-per-node)."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    on_gpu = device.type == "cuda"
    dist.init_process_group("nccl" if on_gpu else "gloo", device_id=device if on_gpu else None)
    try:
        mesh = init_mesh(dp=world_size // sp_degree, sp=sp_degree, device_type=device.type)
        sp = SequenceParallel(mesh["sp"], mode=sp_mode, collectives=sp_collectives) if sp_degree > 1 else None
    except ValueError as error:  # the settings refused on this group (SequenceParallel says why and the fix)
        dist.destroy_process_group()
        raise TrainError(f"--sp-degree {sp_degree} --sp-collectives {sp_collectives}: {error}") from None
    except BaseException:
        dist.destroy_process_group()
        raise
    return Dist(world_size, rank, device, mesh, sp)


def finish(d: Dist) -> None:
    """After a run that succeeded on every rank: wait for all ranks before any closes its connections.

    Rank 0 alone writes the last checkpoint and prints the summary, so the other ranks reach the
    teardown first. Once, in CI (gloo, 2 CPU processes), such a rank then aborted at exit ("terminate
    called without an active exception") after training correctly. A barrier runs only after every
    collective each rank queued, so no rank tears down under another's pending work. Not called on
    failure: a rank that raised alone would leave the others waiting here.
    """
    if d.distributed:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.distributed and dist.is_initialized():
        dist.destroy_process_group()


def agree(d: Dist, error: Exception | None, what: str) -> None:
    """Every rank learns whether any rank failed `what`, so none waits forever in a collective; then
    a failed rank raises its own error and the others a TrainError pointing at it."""
    if d.distributed:
        failed = torch.tensor([int(error is not None)], device=d.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is None and failed.item():
            raise TrainError(f"another rank failed {what} (that rank prints its error); this rank stops too.")
    if error is not None:
        raise error


def on_main(d: Dist, fn: Callable[[], T], what: str) -> T | None:
    """fn() on rank 0 only (file writes); the other ranks wait for it, and fail with it."""
    if not d.distributed:
        return fn()
    result, error = None, None
    if d.is_main:
        try:
            result = fn()
        except Exception as caught:  # noqa: BLE001 - re-raised by agree, after the other ranks hear of it
            error = caught
    agree(d, error, what)
    return result


def rank_positions(positions: range, grad_accum: int, d: Dist) -> list[int | None]:
    """This rank's stream positions of a step whose global positions (dp_size * grad_accum of them)
    are `positions`: dp rank r takes block r, so dp=2 x grad_accum=1 trains exactly the rows, in the
    order, of one process with grad_accum=2. The last step of an epoch-bounded run may be short; its
    missing micro-batches are None (the trainer runs a row without trained tokens), because under
    FSDP every rank must run the same number of forward passes."""
    start = d.dp_rank * grad_accum
    mine: list[int | None] = list(positions[start : start + grad_accum])
    return mine + [None] * (grad_accum - len(mine)) if d.distributed else mine


def shard_model(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """FSDP2 over all ranks (see the module docstring), gradients summed; a no-op in one process.

    Each unit reduce-scatters the gradients its parameters received, so every rank must use the same
    parameters in a step: true for this family (MoE experts are 3-D tensors every step touches;
    filler micro-batches run the full forward). Not `set_reduce_scatter_unused_params`: it would give
    never-used parameters (a VL model's vision tower) zero gradients, which weight decay then shrinks."""
    if not d.distributed:
        return model
    mesh = d.mesh._flatten()  # 1-D over dp x sp: parameters are replicated over sp, so sp ranks shard too
    units = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or ())}
    for module in model.modules():
        if type(module).__name__ in units:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # each FSDP unit keeps its own setting
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def sum_over(tensor: torch.Tensor, d: Dist, axis: str | None) -> torch.Tensor:
    """All-reduce SUM in place over mesh axis `axis` ("dp"), or over all ranks (None)."""
    if d.distributed:
        dist.all_reduce(tensor, group=d.mesh[axis].get_group() if axis else None)
    return tensor


def max_over_ranks(value: float, d: Dist) -> float:
    if not d.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a reduced DTensor (clip_grad_norm_ returns one under FSDP2)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def sp_inputs(batch: dict, d: Dist, pad_token_id: int) -> dict:
    """The model inputs of a collated row: this sp rank's slice (labels shifted, cu_seq_lens global)."""
    return batch if d.sp is None else shard_batch(batch, d.sp, pad_token_id=pad_token_id)


def full_model_state(model: torch.nn.Module, d: Dist) -> dict | None:
    """The unsharded state dict on rank 0's CPU ({} on the others; every rank must call it); None in
    one process, where save_pretrained reads the model directly."""
    if not d.distributed:
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
