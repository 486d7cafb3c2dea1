"""Pass-through to flash-linear-attention's Triton kernels (CUDA only; FLA is imported lazily).

The public signature mirrors FLA's, so this mostly forwards. What matters:
- FLA caches its varlen index helpers by the identity of the `cu_seqlens` tensors. It gets
  padfree's own pair for the row's offsets (`padfree.ops.fla_offsets`), never the caller's tensor:
  stale indices are impossible, and every layer of a row hits FLA's cache (no per-call rebuild
  and host-to-device copy, which would wait for the GPU).
- FLA returns the final state in fp32 and the output in q's dtype, as the other backends do.
- FLA (0.6) hands the whole op to FlashQLA's fused TileLang kernels when the `flash_qla` package is
  installed (its backend dispatch; FLA_FLASH_QLA=0 turns that off). FlashQLA plans each call on the
  host from the offsets' values: its intra-GPU context parallelism (`.tolist()` of the device tensor,
  memoised by the tensor's identity) and its chunk count (`.item()`, which sizes its buffers). A
  fixed-shape row (`chunk_indices` given: a CUDA graph step) must not do that: reading the offsets
  breaks the capture, and a captured plan would be replayed for every later row. So a fixed-shape row
  that FLA would give FlashQLA is called without context parallelism (`auto_cp=False`) and with the
  plan FlashQLA would read precomputed on the device (`_flash_qla_fixed_shape`); the rest go to FLA's
  own kernels, below its dispatch.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from padfree.ops._backend import flash_qla_dispatched
from padfree.ops.fla_offsets import fla_offsets
from padfree.varlen import CHUNK


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_host: Sequence[int] | None = None,
    chunk_indices: torch.Tensor | None = None,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs already validated by the public function; shapes as there."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk_gated_delta_rule

    gate_kwargs = _gate_kwargs(use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel)
    if chunk_indices is not None:  # a fixed-shape row: FlashQLA's plan made on the device, or FLA's own kernels
        if flash_qla_takes(q, k, v, g, beta, initial_state, gate_kwargs):
            return _flash_qla_fixed_shape(
                q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
                chunk_indices,
            )  # fmt: skip
        fla_chunk_gated_delta_rule = without_dispatch(fla_chunk_gated_delta_rule)
    device_offsets = host_offsets = None
    if cu_seqlens is not None:
        device_offsets, host_offsets = fla_offsets(cu_seqlens, cu_seqlens_host)
    return fla_chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        cu_seqlens=device_offsets,
        cu_seqlens_cpu=host_offsets,
        chunk_indices=chunk_indices,
        **gate_kwargs,
    )


def flash_qla_takes(q, k, v, g, beta, initial_state, gate_kwargs: dict) -> bool:
    """Whether FLA's dispatch would hand this call to FlashQLA: installed and enabled (`flash_qla_dispatched`: an FLA
    release without the FlashQLA backend never dispatches to it), and accepted by FLA's own verifier (GPU
    architecture, dtypes, head dims 128, no in-kernel gates)."""
    if not flash_qla_dispatched():
        return False
    from fla.ops.gated_delta_rule.backends.flash_qla import FlashQLABackend

    accepted, _ = FlashQLABackend().verify(
        "chunk_gated_delta_rule", q, k, v, g, beta, initial_state=initial_state, **gate_kwargs
    )
    if not accepted:
        return False
    from flash_qla.ops.gated_delta_rule.chunk import CHUNK_SIZE

    return CHUNK_SIZE == CHUNK  # padfree's chunk table is in 64-token chunks (FlashQLA's on sm90/sm100)


def _flash_qla_fixed_shape(
    q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens, chunk_indices
):  # fmt: skip
    """FlashQLA on a fixed-shape row, with no host read of the offsets, so that a CUDA graph can capture it.

    Without intra-GPU context parallelism (`auto_cp=False`) FlashQLA needs three things from the offsets: the
    chunk table, each document's first chunk, and the number of chunks (it sizes the saved states `h`). It
    takes them precomputed, attached to the offsets tensor (flash_qla.utils.index.prepare_varlen_metadata
    builds the same tuple from a host copy). Here they stay on the device: padfree's chunk table, FLA's
    device-side chunk offsets, and the table's length as the chunk count (an upper bound: the table's padding
    entries name an empty document, whose loads and stores FlashQLA's kernels mask away). They are attached to
    a clone of the offsets that nobody else sees, so the plan can never reach another call (FlashQLA reads it
    again in the backward, from the tensor it saved). The attribute is FlashQLA's hook (0.1.3); a release that
    stopped reading it would read the offsets itself: still correct outside a graph, and a capture would fail
    loudly on its cache assertion (tests/gpu/test_cuda_ops.py captures one).
    """
    import flash_qla
    from fla.ops.utils.index import prepare_chunk_offsets

    cu_seqlens = cu_seqlens.clone()
    chunk_offsets = prepare_chunk_offsets(cu_seqlens, CHUNK).to(cu_seqlens.dtype)
    cu_seqlens._flash_qla_prepared_varlen = (CHUNK, chunk_offsets, chunk_indices.shape[0], chunk_indices)
    return flash_qla.chunk_gated_delta_rule(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens, auto_cp=False,
    )  # fmt: skip


@functools.cache
def without_dispatch(function: Callable) -> Callable:
    """FLA's function below its decorators (its backend dispatch, torch.compiler.disable), which FLA keeps
    reachable through `__wrapped__` (functools.wraps): its own chunked kernels, whatever backends are installed.
    Kernels inside it that FLA dispatches on their own (the Hopper dqkwg through tilelang) still are.
    Disabled for torch.compile again, as FLA's public function is."""
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    return torch.compiler.disable(function)


def _gate_kwargs(use_gate_in_kernel: bool, A_log, dt_bias, use_beta_sigmoid_in_kernel: bool) -> dict:
    """FLA's in-kernel gate arguments, passed only when used: older FLA releases do not take them."""
    kwargs = {}
    if use_gate_in_kernel:
        kwargs.update(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias)
    if use_beta_sigmoid_in_kernel:
        kwargs["use_beta_sigmoid_in_kernel"] = True
    return kwargs
