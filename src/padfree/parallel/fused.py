"""The gather_scatter exchange's two halves as single autograd functions: all-gather then matmul, and matmul then
reduce-scatter, each the other's backward.

    gather_matmul(x_local, weights, sp)  -> [all_gather(x_local) @ w.T for w in weights]    ([T, k] each)
    matmul_scatter(x, weight, sp)        -> reduce_scatter(x @ weight.T)                    ([T_local, hidden])

With `SequenceParallel(collectives="symmetric_memory")` (CUDA, NCCL group, GPUs that reach each other's memory:
NVLink) they run over PyTorch's symmetric memory instead of NCCL, pipelined with the matmuls:
- all-gather + matmul: PyTorch's `symm_mem.fused_all_gather_matmul`. Each rank multiplies its own shard while the
  copy engine (no SMs) brings the other ranks' shards; then multiplies those.
- matmul + reduce-scatter: padfree's own (PyTorch's `fused_matmul_reduce_scatter` takes one product, and the
  backward of a gather_matmul with several weights is a sum of products). One product: each rank multiplies the
  rows other ranks own straight into their symmetric buffers (the matmul's output is the transfer), and after a
  barrier adds its own rows' product to what arrived, in one addmm. A sum: each rank sums the products for the
  other ranks' rows, the copy engine sends them while it multiplies its own rows, and it adds what arrived. No
  NCCL kernel shares the SMs.
Measured at the 0.8B sp=2 step's sizes on 2x H200 (benchmarks/bench_fused_collectives.py, docs/benchmarks.md,
seventeenth session).

Elsewhere (collectives "c10d", the default) the same functions run NCCL's or gloo's all-gather and reduce-scatter
and the same products: the CPU tests check the functions' gradients that way.
"""

from __future__ import annotations

import importlib

import torch
import torch.distributed as dist

from padfree.parallel.comm import _all_gather_flat, _reduce_scatter_flat


def _missing_fused_ops() -> str | None:
    """Why this PyTorch cannot run the fused symmetric-memory ops (None when it can)."""
    try:
        importlib.import_module("torch.distributed._symmetric_memory")  # registers torch.ops.symm_mem
    except ImportError as error:
        return f"this PyTorch has no symmetric memory ({error})"
    if not hasattr(torch.ops.symm_mem, "fused_all_gather_matmul"):
        return "this PyTorch has no torch.ops.symm_mem.fused_all_gather_matmul (PyTorch >= 2.6 has it)"
    return None


def symmetric_memory_problem(group: dist.ProcessGroup) -> str | None:
    """Why collectives="symmetric_memory" cannot run on `group` (None when it can); checked before any compute."""
    if not torch.cuda.is_available():
        return "it needs CUDA GPUs, and this machine has none"
    if dist.get_backend(group) != "nccl":
        return f"it needs an NCCL process group on CUDA GPUs, and this group runs on {dist.get_backend(group)!r}"
    return _missing_fused_ops()


def symmetric_memory_on_this_machine() -> str:
    """For `padfree check`: whether this machine's GPUs could run collectives="symmetric_memory" (every pair reaches
    the other's memory, NCCL, PyTorch's fused ops), or why not. Whether the processes may share CUDA memory (some
    containers forbid it) shows only when a run starts."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return "not available here: it needs 2 or more CUDA GPUs on one machine"
    if not dist.is_available() or not dist.is_nccl_available():
        return "not available here: it needs NCCL, which this PyTorch lacks"
    n = torch.cuda.device_count()
    apart = [(i, j) for i in range(n) for j in range(n) if i != j and not torch.cuda.can_device_access_peer(i, j)]
    if apart:
        return f"not available here: GPUs {apart[0][0]} and {apart[0][1]} cannot reach each other's memory (no NVLink/P2P)"
    if problem := _missing_fused_ops():
        return f"not available here: {problem}"
    return (
        f"available on these {n} GPUs: SequenceParallel(..., collectives='symmetric_memory') or padfree train "
        "--sp-collectives symmetric_memory (the fastest sequence parallelism measured, docs/benchmarks.md)"
    )


# --- the two exchanges, NCCL/gloo (reference) and symmetric memory ----------------------------------------------


def _gather_then_matmul(x_local: torch.Tensor, weights_T: list[torch.Tensor], group, symmetric: bool):
    """(the gathered [P * T_local, C] input, [gathered @ w_T for w_T in weights_T])."""
    if symmetric:
        importlib.import_module("torch.distributed._symmetric_memory")  # registers the op (a dict lookup once done)
        return torch.ops.symm_mem.fused_all_gather_matmul(
            x_local.contiguous(), weights_T, 0, group.group_name, return_A=True
        )
    gathered = x_local.new_empty(dist.get_world_size(group) * x_local.shape[0], *x_local.shape[1:])
    _all_gather_flat(gathered.view(-1), x_local.contiguous().view(-1), group=group)
    return gathered, [gathered @ w_T for w_T in weights_T]


def _sum_of_products(terms, rows: slice, start: torch.Tensor | None = None) -> torch.Tensor:
    """start + sum(a[rows] @ b for a, b in terms) (start None: zero), accumulated by addmm."""
    acc = start
    for a, b in terms:
        acc = torch.mm(a[rows], b) if acc is None else torch.addmm(acc, a[rows], b)
    return acc


_side_streams: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One stream per device for the copies to other GPUs (made once, before any capture: the eager step runs
    first)."""
    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]


def _matmul_then_scatter(terms: list[tuple[torch.Tensor, torch.Tensor]], group, symmetric: bool) -> torch.Tensor:
    """Rows [rank * T_local, (rank + 1) * T_local) of sum(a @ b for a, b in terms), summed over the ranks
    (a [T, k_i], b [k_i, C]): the reduce-scatter of a sum of products."""
    P, rank = dist.get_world_size(group), dist.get_rank(group)
    T, C = terms[0][0].shape[0], terms[0][1].shape[1]
    T_local, dtype = T // P, terms[0][0].dtype
    if not symmetric:
        full = _sum_of_products(terms, slice(None))
        out = full.new_empty(T_local, C)
        _reduce_scatter_flat(out.view(-1), full.contiguous().view(-1), group=group)
        return out
    from torch.distributed._symmetric_memory import get_symm_mem_workspace

    rows = [slice(r * T_local, (r + 1) * T_local) for r in range(P)]
    peers = [(rank + step) % P for step in range(1, P)]
    # Each rank's inbox [P, T_local, C] in the symmetric workspace (shared with PyTorch's fused ops, all of which
    # begin and end with a barrier): slot s holds rank s's products for this rank's rows; its own slot is unused.
    memory = get_symm_mem_workspace(group.group_name, min_size=P * T_local * C * terms[0][0].element_size())
    inbox = [memory.get_buffer(r, (P, T_local, C), dtype) for r in range(P)]
    memory.barrier(channel=0)  # every rank has finished reading its inbox from the last call
    if len(terms) == 1:
        # One product: the matmul writes the other ranks' rows straight into their inboxes, over NVLink (its output
        # is the transfer); then, once theirs have arrived, this rank's own rows are added in the same addmm.
        (a, b), = terms
        for peer in peers:
            torch.mm(a[rows[peer]], b, out=inbox[peer][rank])
        memory.barrier(channel=1)
        arrived = sum((inbox[rank][peer] for peer in peers[1:]), inbox[rank][peers[0]])
        return torch.addmm(arrived, a[rows[rank]], b)
    # A sum of products: addmm cannot write its sum into another GPU's memory without first copying its input
    # there and reading it back across NVLink (PyTorch's addmm(out=) copies the input into `out`, and cuBLAS then
    # reads that). So the sums for the other ranks are made here, and the copy engine sends them (no SMs) while
    # this rank multiplies its own rows.
    current, side = torch.cuda.current_stream(), _side_stream(terms[0][0].device)
    sent = []  # kept referenced until the side stream is joined, so the allocator cannot hand them out before
    for peer in peers:
        sent.append(_sum_of_products(terms, rows[peer]))
        side.wait_stream(current)
        with torch.cuda.stream(side):
            inbox[peer][rank].copy_(sent[-1])
    mine = _sum_of_products(terms, rows[rank])
    with torch.cuda.stream(side):
        memory.barrier(channel=1)  # every rank's sums for this rank's rows have arrived
    current.wait_stream(side)
    del sent
    for peer in peers:
        mine += inbox[rank][peer]
    return mine


# --- autograd ------------------------------------------------------------------------------------------------------


class _GatherMatmul(torch.autograd.Function):
    """[all_gather(x_local) @ w.T for w in weights]; backward: the input's gradient is the reduce-scatter of
    sum(g @ w), each weight's gradient g.T @ gathered (this rank's rows only: the group's sum completes it)."""

    @staticmethod
    def forward(ctx, x_local, group, symmetric, *weights):
        gathered, outs = _gather_then_matmul(x_local, [w.T for w in weights], group, symmetric)
        ctx.group, ctx.symmetric = group, symmetric
        ctx.save_for_backward(gathered, *weights)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        gathered, *weights = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_then_scatter(list(zip(grads, weights)), ctx.group, ctx.symmetric)
        grad_weights = [g.T @ gathered if ctx.needs_input_grad[3 + i] else None for i, g in enumerate(grads)]
        return grad_x, None, None, *grad_weights


class _MatmulScatter(torch.autograd.Function):
    """reduce_scatter(x @ weight.T); backward: the all-gather of the output's gradient times the weight, and the
    weight's gradient from the gathered gradient (this rank's columns only)."""

    @staticmethod
    def forward(ctx, x, weight, group, symmetric):
        ctx.group, ctx.symmetric = group, symmetric
        ctx.save_for_backward(x, weight)
        return _matmul_then_scatter([(x, weight.T)], group, symmetric)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gathered, (grad_x,) = _gather_then_matmul(grad_out, [weight], ctx.group, ctx.symmetric)
        grad_weight = gathered.T @ x if ctx.needs_input_grad[1] else None
        return grad_x if ctx.needs_input_grad[0] else None, grad_weight, None, None


def _as_autocast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in the autocast dtype where autocast is on (as it would cast a matmul's operands; the custom
    functions and PyTorch's fused symmetric-memory ops are not autocast themselves), else as they are. The cast is
    outside the functions, so autograd casts the gradients back."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return list(tensors)
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) for t in tensors]


def gather_matmul(x_local: torch.Tensor, weights: list[torch.Tensor], sp) -> list[torch.Tensor]:
    """[T, k_i] for each weight [k_i, C]: every rank's `x_local` [T_local, C], gathered in rank order, times w.T."""
    x_local, *weights = _as_autocast(x_local, *weights)
    with torch.autocast(x_local.device.type, enabled=False):
        return list(_GatherMatmul.apply(x_local, sp.group, sp.collectives == "symmetric_memory", *weights))


def matmul_scatter(x: torch.Tensor, weight: torch.Tensor, sp) -> torch.Tensor:
    """[T_local, C]: this rank's rows of x [T, k] @ weight.T ([C, k]), summed over the ranks."""
    x, weight = _as_autocast(x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return _MatmulScatter.apply(x, weight, sp.group, sp.collectives == "symmetric_memory")
