"""Pass-through to flash-linear-attention's Triton kernels (CUDA only; FLA is imported lazily).

The public signature mirrors FLA's, so this only forwards. Two details matter:
- FLA caches its varlen index helpers by the identity of the `cu_seqlens` tensor; a caller that
  reuses one tensor object for different offsets (or mutates it in place) would get stale
  indices, so FLA always gets a fresh clone. It also gets the host copy of the offsets (read once
  by validation) as `cu_seqlens_cpu`, which spares it a device-to-host sync of its own.
- FLA returns the final state in fp32 and the output in q's dtype, as the other backends do.
"""

from __future__ import annotations

from typing import Sequence

import torch


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs already validated by the public function; shapes as there."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk_gated_delta_rule

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
        cu_seqlens=None if cu_seqlens is None else cu_seqlens.clone(),
        cu_seqlens_cpu=None if cu_seqlens is None else torch.tensor(cu_seqlens_host, dtype=cu_seqlens.dtype),
    )
