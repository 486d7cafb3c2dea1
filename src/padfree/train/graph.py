"""`padfree train --cuda-graph`: the trainer's step replayed from CUDA graphs (padfree.cuda_graph).

One process, or under torchrun one Ulysses sequence-parallel group without data parallelism: the weights
stay whole on every rank (no FSDP2: its hooks gather and free sharded weights around each layer, outside
any graph), each rank hands the step the whole row and keeps its slice, and the captured step sums the
gradients and the row's loss over the group itself. The learning rate lives in a device tensor that the
schedule updates in place (a float would be baked into the graph).
"""

from __future__ import annotations

import torch

from padfree.train.config import TrainConfig
from padfree.train.errors import TrainError


def check_world(config: TrainConfig, world_size: int) -> None:
    """Refuse --cuda-graph with data parallelism, before any process group or file exists."""
    if config.cuda_graph and world_size > config.sp_degree:
        raise TrainError(
            f"--cuda-graph covers one process, or one sequence-parallel group (--sp-degree = the number of "
            f"processes), but this run has {world_size} processes and --sp-degree {config.sp_degree}, which leaves "
            f"data parallelism; launch --sp-degree processes (torchrun --nproc-per-node {config.sp_degree}), pass "
            f"--sp-degree {world_size}, or drop --cuda-graph."
        )


def lr_in_tensors(optimizer) -> None:
    """After loading a checkpoint's optimizer state, which replaces the groups' values: the learning rate back
    in device tensors, which the graph reads in place (a float would be baked in). Resuming across modes is
    refused (padfree.train.trainer.train), so this is the only conversion needed."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group and not isinstance(group[key], torch.Tensor):
                group[key] = torch.tensor(float(group[key]), device=group["params"][0].device)


def plain_scheduler_state(scheduler) -> dict:
    """The schedule's state with learning rates as floats. --cuda-graph keeps them in CUDA tensors (see
    padfree.train.trainer.make_optimizer); floats load on any device, and the schedule writes them into the
    tensors in place."""
    return {key: [float(v) for v in value] if isinstance(value, list) and value and isinstance(value[0], torch.Tensor)
            else value for key, value in scheduler.state_dict().items()}  # fmt: skip


def graph_step(config: TrainConfig, model, optimizer, stream, precision):
    """padfree.cuda_graph's step for --cuda-graph (None without it), on one GPU or sharded over the sp group
    (check_world refused data parallelism); its refusals become TrainErrors naming padfree train's flags."""
    if not config.cuda_graph:
        return None
    from padfree.cuda_graph import CudaGraphTrainStep, context_parallel_layers
    from padfree.static_row import patched_settings

    sp = patched_settings(model)["sequence_parallel"]
    if sp is not None and (context := context_parallel_layers(sp)):
        raise TrainError(
            f"--cuda-graph --sp-degree {config.sp_degree}: --sp-mode {config.sp_mode} runs the {' and '.join(context)} "
            f"layers with context parallelism ({config.sp_degree} does not divide their heads), which cuts each row's "
            "documents on the host and so cannot be replayed from a CUDA graph; pass an --sp-degree that divides the "
            "model's heads (Ulysses), or drop --cuda-graph."
        )
    max_docs = max(len(row) for row in stream.plan.rows) + 1  # + the padding document of padfree.collate(pad_to=)
    try:
        return CudaGraphTrainStep(
            model, optimizer, config.max_tokens, max_docs, eager_steps=1,
            autocast_dtype=precision.compute if precision.autocast else None,
            max_grad_norm=config.max_grad_norm if config.max_grad_norm > 0 else float("inf"),
        )  # fmt: skip
    except ValueError as error:
        raise TrainError(f"--cuda-graph: {error}") from None
