"""Varlen causal depthwise conv1d, the short convolution in front of Gated DeltaNet.

Legend: B batch, T tokens per row, D channels, W kernel width, N documents (sequences).

Backends: "torch" (vectorised PyTorch, any device, autograd, torch.compile), "triton" (padfree's own
Triton kernels, CUDA, no states: `triton_kernels`), "fla" (FLA's Triton kernel, CUDA), "naive" (one
`F.conv1d` per document: the oracle), "auto" (`conv_backend`: "triton" on CUDA without states, else as
`resolve_backend`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from padfree.ops._backend import BACKENDS, resolve_backend
from padfree.varlen import check_chunk_indices, check_cu_seqlens_tensor, check_offsets
from padfree.ops.conv1d import naive, torch_backend

__all__ = ["causal_conv1d", "conv_backend"]

ACTIVATIONS = (None, "silu", "swish")
CONV_BACKENDS = BACKENDS + ("triton",)


def _triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (it comes with PyTorch's CUDA wheels)"
    return None


def conv_backend(backend: str, device: torch.device, with_states: bool = False) -> str:
    """The conv's concrete backend. "auto" on CUDA picks padfree's Triton kernels ("triton") when no state goes in
    or out: on an H100 the 0.8b conv's forward + backward took 0.61 ms against FLA's 0.73, and the 0.8b graphed
    training step ran 2.8% faster with 3 GiB less peak memory (docs/benchmarks.md, eleventh session). With
    states, and elsewhere, "auto" resolves as the Gated DeltaNet ops do (resolve_backend)."""
    if backend not in CONV_BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {CONV_BACKENDS}; pass one of those.")
    if backend == "triton":
        if device.type != "cuda":
            raise ValueError(f"backend='triton' needs CUDA tensors, got device {device}; use backend='torch' on CPU.")
        if with_states:
            raise ValueError("backend='triton' does not take initial_state or output_final_state; use backend='fla'.")
        missing = _triton_missing()
        if missing is not None:
            raise ValueError(f"backend='triton' needs Triton: {missing}.")
        return "triton"
    if backend == "auto" and device.type == "cuda" and not with_states and _triton_missing() is None:
        return "triton"
    return resolve_backend(backend, device, op="conv1d")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | Sequence[int] | None = None,
    chunk_indices: torch.Tensor | None = None,
    backend: str = "auto",
    split_sizes: Sequence[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Causal depthwise conv1d over [B, T, D] that restarts at every document boundary.

        y[t, d] = act(bias[d] + sum_{j<W} weight[d, j] * x[t - (W-1) + j, d]),

    where x before a document's start is read from `initial_state` (or is 0), never from the
    previous document. A subset of FLA 0.6's `fla.modules.causal_conv1d.causal_conv1d` with the
    same names and meaning; not supported: `residual`, `cp_context`, and FLA's
    `backend` values ("triton", "cuda", "mix": ours picks an implementation, see below).

    Args:
        x: [B, T, D]. With `cu_seqlens`, B must be 1 (one packed row).
        weight: [D, W], e.g. `conv1d.weight.squeeze(1)` of an `nn.Conv1d(D, D, W, groups=D)`.
        bias: [D] or None.
        activation: None, "silu" or "swish" (the same function).
        initial_state: [N, D, W] or None: per document, the W inputs before it (oldest first);
            the conv reads its last W - 1 columns. N = number of documents, or B without cu_seqlens.
        output_final_state: also return each document's last W inputs, [N, D, W] in x's dtype,
            taken from `initial_state` (or 0) where a document is shorter than W.
        cu_seqlens: [N + 1] integer offsets on x's device, 0 = cu[0] < cu[1] < ... < cu[N] = T.
        cu_seqlens_cpu: the same offsets on the host (CPU tensor or ints), e.g.
            `PackedBatch.cu_seqlens_host`. Lets the checks and FLA run without a device sync.
        chunk_indices: FLA's [NT, 2] table of (document, 64-token chunk) for cu_seqlens; backends
            "fla" and "triton" (which finds the boundaries from cu_seqlens on the device and only
            checks the table's shape). Given without cu_seqlens_cpu, the offsets are trusted and never
            read on the host, and empty documents may end the row (padfree.cuda_graph; see
            chunk_gated_delta_rule).
        backend: "auto", "torch", "triton" (CUDA, no states), "fla" (CUDA + flash-linear-attention) or
            "naive". "auto" is "triton" on CUDA without states (see `conv_backend`).
        split_sizes: a padfree extension, not in FLA's signature: channel counts d_i > 0 that sum to D.
            Then y comes back as the tuple of its parts [B, T, d_i], each contiguous, with the values of
            `torch.split(y, split_sizes, -1)`: Gated DeltaNet's q, k, v. The "triton" backend writes up to
            three parts from its kernel and takes their gradients (None for an unused part) as they are;
            the other backends copy the parts out of y.

    Dtypes: weight, bias and initial_state may have another floating dtype than x (Qwen3.5 runs
    fp32 or bf16 weights). The sum is accumulated in fp32 (fp64 if any input is fp64) as FLA's
    kernel does, and y is returned in x's dtype. transformers' fallback instead casts x to the
    weight's dtype; with bf16 weights ours is the more accurate, by bf16 rounding of the products.

    Returns:
        y [B, T, D] (with split_sizes: its parts), or (y, final_state) when output_final_state is True.
        (FLA always returns the pair; padfree returns the bare tensor in the common case.)

    Checks on the values of cu_seqlens run eagerly (from cu_seqlens_cpu when given, else with one
    device-to-host copy) and are skipped while torch.compile traces, where the graph trusts them.

    Example:
        >>> x = torch.randn(1, 7, 6)
        >>> y = causal_conv1d(x, torch.randn(6, 4), activation="silu",
        ...                   cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32), backend="torch")
        >>> y.shape
        torch.Size([1, 7, 6])
        >>> q, k, v = causal_conv1d(x, torch.randn(6, 4), split_sizes=[2, 2, 2], backend="torch")
        >>> q.shape, q.is_contiguous()
        (torch.Size([1, 7, 2]), True)
    """
    kind = conv_backend(backend, x.device, with_states=initial_state is not None or output_final_state)
    if chunk_indices is not None:
        check_chunk_indices(chunk_indices, cu_seqlens, kind)
    trusted = chunk_indices is not None and cu_seqlens_cpu is None
    host_offsets = _check_inputs(x, weight, bias, activation, initial_state, cu_seqlens, cu_seqlens_cpu, trusted)
    if split_sizes is not None:
        split_sizes = _check_split_sizes(split_sizes, x.shape[-1])
    if kind == "torch":
        y, final = torch_backend.causal_conv1d(
            x, weight, bias, activation, initial_state, output_final_state, cu_seqlens
        )
    elif kind == "naive":
        y, final = naive.causal_conv1d(x, weight, bias, activation, initial_state, output_final_state, cu_seqlens)
    elif kind == "triton":
        from padfree.ops.conv1d import triton_kernels

        y, final = triton_kernels.causal_conv1d(x, weight, bias, activation, cu_seqlens, split_sizes), None
    elif kind == "fla":
        from padfree.ops.conv1d import fla_backend

        y, final = fla_backend.causal_conv1d(
            x, weight, bias, activation, initial_state, output_final_state, cu_seqlens, host_offsets, chunk_indices
        )
    else:
        raise ValueError(f"backend {kind!r} has no conv1d implementation; use one of {CONV_BACKENDS}.")
    if split_sizes is not None and kind != "triton":
        # Parts cut from the whole y. The copy is fine here: on CUDA "auto" picks these backends only with conv
        # states (context parallelism), where FLA's gated delta rule copied strided q, k, v slices to contiguous
        # anyway (its input_guard), so the copy moves rather than adds; otherwise they are the CPU and reference
        # paths.
        y = tuple(p.contiguous() for p in torch.split(y, split_sizes, dim=-1))
    return (y, final) if output_final_state else y


def _check_inputs(
    x, weight, bias, activation, initial_state, cu_seqlens, cu_seqlens_cpu, trusted: bool = False
) -> tuple[int, ...] | None:
    """Raise ValueError on inputs the backends would misread; return the host offsets if known."""
    if x.dim() != 3:
        raise ValueError(
            f"x must be [B, T, D], got shape {tuple(x.shape)}; add the batch dim with x.unsqueeze(0) "
            "or move channels last."
        )
    B, T, D = x.shape
    if T == 0:
        raise ValueError(f"x has no tokens (shape {tuple(x.shape)}); skip the call for an empty row.")
    if weight.dim() != 2 or weight.shape[0] != D or weight.shape[1] < 1:
        raise ValueError(
            f"weight must be [D, W] = [{D}, W] for x of shape {tuple(x.shape)}, got {tuple(weight.shape)}; "
            "pass nn.Conv1d(D, D, W, groups=D).weight.squeeze(1)."
        )
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must be [D] = [{D}], got {tuple(bias.shape)}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; use one of {ACTIVATIONS}.")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("initial_state", initial_state)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}.")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move it with .to(x.device).")

    N, host_offsets = _check_cu_seqlens(x, cu_seqlens, cu_seqlens_cpu, trusted)
    if initial_state is not None and tuple(initial_state.shape) != (N, D, weight.shape[1]):
        raise ValueError(
            f"initial_state must be [N, D, W] = [{N}, {D}, {weight.shape[1]}] (one state per "
            f"{'document' if cu_seqlens is not None else 'batch row'}), got {tuple(initial_state.shape)}."
        )
    return host_offsets


def _check_split_sizes(split_sizes, D: int) -> tuple[int, ...]:
    sizes = tuple(split_sizes)
    if any(isinstance(d, bool) or not isinstance(d, (int, torch.SymInt)) for d in sizes):
        raise ValueError(f"split_sizes must be ints (channels per part), got {sizes!r}; pass e.g. [Dq, Dk, Dv].")
    if any(d <= 0 for d in sizes):
        raise ValueError(f"split_sizes={list(sizes)} has a part of <= 0 channels; leave empty parts out.")
    if sum(sizes) != D:
        raise ValueError(
            f"split_sizes={list(sizes)} sums to {sum(sizes)} but x has D = {D} channels; "
            f"pass sizes that add up to {D}."
        )
    return sizes


def _check_cu_seqlens(x, cu_seqlens, cu_seqlens_cpu, trusted: bool = False) -> tuple[int, tuple[int, ...] | None]:
    """(number of documents, host offsets or None) after checking the offsets against x."""
    B, T, _ = x.shape
    if cu_seqlens is None:
        if cu_seqlens_cpu is not None:
            raise ValueError("cu_seqlens_cpu was given without cu_seqlens; pass both (kernels read the device copy).")
        return B, None
    if B != 1:
        raise ValueError(
            f"cu_seqlens needs one packed row (B = 1), got x of shape {tuple(x.shape)}; "
            "concatenate the rows into x of shape [1, B*T, D] with offsets for each document."
        )
    check_cu_seqlens_tensor(cu_seqlens)
    if cu_seqlens.device != x.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but x is on {x.device}; use .to(x.device).")
    N = cu_seqlens.numel() - 1
    if cu_seqlens_cpu is not None:
        offsets = cu_seqlens_cpu.tolist() if torch.is_tensor(cu_seqlens_cpu) else cu_seqlens_cpu
        host_offsets = tuple(int(o) for o in offsets)
        if len(host_offsets) != N + 1:
            raise ValueError(f"cu_seqlens_cpu has {len(host_offsets)} offsets but cu_seqlens has {N + 1}.")
    elif trusted or torch.compiler.is_compiling():
        # values are trusted with chunk_indices (validated by padfree.cuda_graph before capture) and inside a
        # compiled graph; reading them would break either graph
        return N, None
    else:
        host_offsets = tuple(cu_seqlens.tolist())
    check_offsets(host_offsets, T, row_name="x")
    return N, host_offsets
