"""The offsets tensors padfree hands to flash-linear-attention: one pair per distinct row, reused.

FLA memoises its varlen index helpers (chunk indices, sequence ids) by the *identity* of the
`cu_seqlens` / `cu_seqlens_cpu` tensors it receives, in a cache of 4 entries. Two ways to misuse
that:
- hand it the caller's tensor: a caller that edits its offsets in place, or reuses the object for
  the next row, gets indices from the previous row (silently wrong);
- hand it a fresh copy on every call (what padfree did first): correct, but every conv and gated
  delta call then rebuilds the indices on the host and copies them to the GPU from pageable
  memory, which waits for the GPU to drain. That was ~90 device syncs per training step of a
  24-layer model (18 GDN layers x conv and recurrence x forward, recompute and backward), and the
  reason a step left the GPU idle more than half the time.

So the tensors here are keyed by the offsets' *values* (plus device and dtype): every layer of a
row gets the same two objects, which nobody outside padfree ever sees or mutates, so FLA's identity
cache hits after the first layer and can never be stale. The device copy is made from pinned
memory without blocking. The cache keeps the last few rows only (a row's offsets are small).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from padfree.varlen import offsets_to


def fla_offsets(
    cu_seqlens: torch.Tensor, host_offsets: Sequence[int] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cu_seqlens on its device, cu_seqlens_cpu int64 on the host) to pass FLA for these offsets.

    `host_offsets` are the validated values of `cu_seqlens`. Without them (inside a compiled graph,
    where reading the values would break it) FLA gets a fresh clone and reads the offsets itself.
    """
    if host_offsets is None:
        return cu_seqlens.clone(), None
    return _cached(tuple(int(o) for o in host_offsets), cu_seqlens.device, cu_seqlens.dtype)


@functools.lru_cache(maxsize=8)
def _cached(offsets: tuple[int, ...], device: torch.device, dtype: torch.dtype):
    host = torch.tensor(offsets, dtype=torch.long)
    return offsets_to(host.to(dtype), device), host
