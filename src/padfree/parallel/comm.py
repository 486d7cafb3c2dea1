"""Differentiable collectives over the sequence-parallel group, in the layouts the layers use.

The backward of an all-to-all is the inverse all-to-all, of an all-gather a reduce-scatter and of a
reduce-scatter an all-gather; on NCCL and gloo alike. Three ways, picked by
`SequenceParallel(collectives=...)`:
- "c10d" (default): torch.distributed's plain ops inside padfree's autograd functions; they return
  plain tensors. In the 0.8b sp=2 step on 2x H200 they gave 5-22% more tokens/s than the functional
  collectives, in each of six same-process comparisons (docs/benchmarks.md, twelfth session).
- "functional": PyTorch's functional collectives with autograd. Each returns a tensor subclass
  (AsyncCollectiveTensor), whose dispatch took 54 ms of host time in that Ulysses step (432 calls).
  Kept to compare against.
- "symmetric_memory": as "c10d", except the gather_scatter exchange's all-gathers and reduce-scatters, which run
  over PyTorch's symmetric memory pipelined with their matmuls (padfree.parallel.fused; CUDA, NVLink).
Every rank must call them in the same order; the layers make sure each one's output reaches the
loss on every rank, so the backward collectives run everywhere too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

COLLECTIVES = ("c10d", "functional", "symmetric_memory")

# Renamed between releases (torch 2.13 deprecates all_gather_into_tensor, reduce_scatter_tensor and
# all_gather_tensor_autograd); the GPU machines run older releases than CI's.
_funcol_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd
_funcol_reduce_scatter = getattr(funcol, "reduce_scatter_single_autograd", None) or funcol.reduce_scatter_tensor_autograd
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def check_collectives(collectives: str) -> None:
    """Refuse an unknown `collectives` (SequenceParallel's setting) before any compute."""
    if collectives not in COLLECTIVES:
        raise ValueError(f"collectives={collectives!r} is not one of {COLLECTIVES}; pass one of those.")


class _AllToAll(torch.autograd.Function):
    """[P, ...] (dim 0: the destination rank) -> [P, ...] (dim 0: the source rank). Its transpose is the
    same exchange: slot p of the gradient goes back to rank p, which sent it."""

    @staticmethod
    def forward(ctx, send, group):
        ctx.group = group
        send = send.contiguous()  # NCCL and gloo refuse strided buffers; a no-op for padfree's own callers
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)
        return recv

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class _AllGather(torch.autograd.Function):
    """[...] from every rank -> [P, ...]; backward: the reduce-scatter of the gradient (each rank's
    slice is used by every rank). Flat buffers: gloo (CPU) checks the output's slots against the
    input's shape, NCCL takes either."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.new_empty(dist.get_world_size(group), *x.shape)
        _all_gather_flat(out.view(-1), x.contiguous().view(-1), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = grad.new_empty(grad.shape[1:])
        _reduce_scatter_flat(out.view(-1), grad.view(-1), group=ctx.group)
        return out, None


def _all_to_all(send: torch.Tensor, group: dist.ProcessGroup, collectives: str) -> torch.Tensor:
    if collectives == "functional":
        return funcol.all_to_all_single_autograd(send, None, None, group)
    return _AllToAll.apply(send, group)


def seq_to_heads(send_PTC: torch.Tensor, group: dist.ProcessGroup, collectives: str = "c10d") -> torch.Tensor:
    """[P, T_local, C] (slot p: the columns rank p needs) -> [P * T_local, C]: the whole row, this rank's
    columns. The caller writes the send layout directly (a transposing copy of [T_local, P, C] would
    be one more pass over the activations each way)."""
    recv = _all_to_all(send_PTC, group, collectives)  # dim 0: the source rank
    return recv.reshape(-1, *send_PTC.shape[2:])


def heads_to_seq(y_TC: torch.Tensor, group: dist.ProcessGroup, collectives: str = "c10d") -> torch.Tensor:
    """Inverse of seq_to_heads: [P * T_local, C] -> [T_local, P, C] (slot p: rank p's columns)."""
    P = dist.get_world_size(group)
    send = y_TC.reshape(P, -1, *y_TC.shape[1:]).contiguous()  # dim 0: the rank owning those tokens
    recv = _all_to_all(send, group, collectives)  # dim 0: the head group
    return recv.transpose(0, 1)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: NCCL's reduce-scatter (the all-gather's
    backward) rejects the expanded or strided gradients that sums and slices of its output produce."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def all_gather_stack(x: torch.Tensor, group: dist.ProcessGroup, collectives: str = "c10d") -> torch.Tensor:
    """[...] from every rank -> [P, ...] in rank order."""
    if collectives == "functional":
        P = dist.get_world_size(group)
        return _ContiguousGrad.apply(_funcol_all_gather(x.contiguous(), 0, group).view(P, *x.shape))
    return _AllGather.apply(x, group)


def functional_reduce_scatter_sum(x_P: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[P, ...] on every rank -> [...]: slot `rank` summed over the ranks, through PyTorch's functional collectives
    (collectives="functional"; c10d's and symmetric memory's reduce-scatter is padfree.parallel.fused's, with its
    matmul)."""
    return _funcol_reduce_scatter(x_P.contiguous().flatten(0, 1), "sum", 0, group).view(x_P.shape[1:])


def keep_in_graph(x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
    """x, with a zero-weighted dependence on `unused`: a collective whose output this rank does not
    need still gets a backward call, which the other ranks' backward collectives wait for."""
    for t in unused:
        x = x + (0.0 * t).sum().to(x.dtype)
    return x
