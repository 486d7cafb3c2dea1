"""Pass-through to flash-linear-attention's Triton kernels (CUDA only; FLA is imported lazily).

The public signature mirrors FLA's, so this mostly forwards. What matters:
- FLA caches its varlen index helpers by the identity of the `cu_seqlens` tensors. It gets
  padfree's own pair for the row's offsets (`padfree.ops.fla_offsets`), never the caller's tensor:
  stale indices are impossible, and every layer of a row hits FLA's cache (no per-call rebuild
  and host-to-device copy, which would wait for the GPU).
- FLA returns the final state in fp32 and the output in q's dtype, as the other backends do.
- FLA (0.6) hands the whole op to FlashQLA's fused TileLang kernels when the `flash_qla` package is
  installed (its backend dispatch; FLA_FLASH_QLA=0 turns that off). FlashQLA plans each call on the
  host from the offsets' values (`.tolist()` of the device tensor, memoised by the tensor's identity)
  and sizes its buffers by the row's chunk count. A fixed-shape row (`chunk_indices` given: a CUDA
  graph step) must not do that: reading the offsets breaks the capture, and a captured plan would be
  replayed for every later row. Those calls go to FLA's own kernels, below its dispatch.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from padfree.ops.fla_offsets import fla_offsets


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

    if chunk_indices is not None:
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
        **_gate_kwargs(use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel),
    )


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
