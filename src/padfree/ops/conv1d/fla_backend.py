"""Pass-through to flash-linear-attention's Triton `causal_conv1d` (CUDA only, imported lazily).

FLA 0.6 exposes it as `fla.modules.causal_conv1d.causal_conv1d`; older releases as
`fla.modules.convolution.causal_conv1d` (0.6 keeps that path as an alias). Both take x [B, T, D],
weight [D, W], initial_state / final state [N, D, W] and return (y, final_state), the layout and
meaning padfree's other backends use, so nothing is transposed here. The offsets FLA gets are
padfree's cached pair for the row (`padfree.ops.fla_offsets`): one host-to-device copy per row.
"""

from __future__ import annotations

import functools
import inspect
from typing import Sequence

import torch

from padfree.ops.fla_offsets import fla_offsets


@functools.cache
def _fla_causal_conv1d():
    try:
        from fla.modules.causal_conv1d import causal_conv1d
    except ImportError:
        from fla.modules.convolution import causal_conv1d
    return causal_conv1d, frozenset(inspect.signature(causal_conv1d).parameters)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_host: Sequence[int] | None = None,
    chunk_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FLA's kernel with padfree's (validated) arguments; returns (y [B, T, D], final_state [N, D, W])."""
    fla_conv, params = _fla_causal_conv1d()
    kwargs = dict(
        # Ulysses hands a column slice (each rank's channels of a wider row). FLA 0.6 accepts
        # strided x, and a lone strided call ran fine on an H200, but FLA's own tests cover dense x
        # and a Ulysses step on FLA faulted there for a reason not yet found (docs/benchmarks.md):
        # take the covered path. A no-op for the unsharded row, whose x is a projection's output.
        x=x.contiguous(),
        weight=weight,
        bias=bias,
        initial_state=initial_state,
        output_final_state=output_final_state,
        activation=activation,
    )
    if cu_seqlens is not None:
        # padfree's own tensors for these offsets, never the caller's (see padfree.ops.fla_offsets)
        device_offsets, host_offsets = fla_offsets(cu_seqlens, cu_seqlens_host)
        kwargs["cu_seqlens"] = device_offsets
        if "cu_seqlens_cpu" in params:  # FLA >= 0.6: builds its indices from the host copy
            kwargs["cu_seqlens_cpu"] = host_offsets
        if chunk_indices is not None:  # a fixed-shape row: FLA must not build (and sync for) its own table
            if "chunk_indices" not in params:
                raise ValueError("this FLA release's causal_conv1d takes no chunk_indices; upgrade to FLA >= 0.6.")
            kwargs["chunk_indices"] = chunk_indices
    y, final_state = fla_conv(**kwargs)
    return y, final_state
