"""Differentiable collectives over the sequence-parallel group, in the layouts the layers use.

All are PyTorch's functional collectives with autograd (the backward of an all-to-all is the
inverse all-to-all, of an all-gather a reduce-scatter), on NCCL and gloo alike. Their names moved
between releases (torch 2.13 deprecates both `torch.distributed.nn.functional` and
`all_gather_tensor_autograd`), hence the lookup below.
Every rank must call them in the same order; the layers make sure each one's output reaches the
loss on every rank, so the backward collectives run everywhere too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def seq_to_heads(x_TPC: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[T_local, P, C] (slot p: what rank p needs) -> [P * T_local, C]: the whole row, this rank's slot."""
    send = x_TPC.transpose(0, 1).contiguous()  # [P, T_local, C]: dim 0 is the destination rank
    recv = funcol.all_to_all_single_autograd(send, None, None, group)  # dim 0: the source rank
    return recv.reshape(-1, *x_TPC.shape[2:])


def heads_to_seq(y_TC: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of seq_to_heads: [P * T_local, C] -> [T_local, P, C] (slot p: rank p's heads)."""
    P = dist.get_world_size(group)
    send = y_TC.reshape(P, -1, *y_TC.shape[1:]).contiguous()  # dim 0: the rank owning those tokens
    recv = funcol.all_to_all_single_autograd(send, None, None, group)  # dim 0: the head group
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


def all_gather_stack(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[...] from every rank -> [P, ...] in rank order."""
    P = dist.get_world_size(group)
    return _ContiguousGrad.apply(_all_gather(x.contiguous(), 0, group).view(P, *x.shape))


def keep_in_graph(x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
    """x, with a zero-weighted dependence on `unused`: a collective whose output this rank does not
    need still gets a backward call, which the other ranks' backward collectives wait for."""
    for t in unused:
        x = x + (0.0 * t).sum().to(x.dtype)
    return x
