"""Packed-batch metadata: where each document starts and ends inside one packed row.

A packed row is `[1, T]`: documents laid end to end. `cu_seqlens` holds the cumulative document
lengths `[0, len_0, len_0 + len_1, ..., T]` (int32, the layout FLA and flash-attn take). It is
built once per batch, on the host, from lengths or from position_ids that restart at 0, and then
passed explicitly to every layer: no layer re-derives it, and no layer syncs with the host for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

CHUNK = 64  # the token chunk of a fixed-shape row's chunk table: FLA's (gated delta rule and conv) and FlashQLA's


@dataclass(frozen=True)
class PackedBatch:
    """Document boundaries of one packed row.

    cu_seqlens:      [N + 1] int32 on the row's device, for kernels.
    cu_seqlens_host: the same offsets as a tuple of Python ints, for Python-level slicing without
                     a device-to-host sync.
    max_seqlen:      the longest document's length.
    chunk_indices:   None, except in a fixed-shape row (`padfree.static_row.StaticRow`): FLA's
                     [NT, 2] int32 table of (document, CHUNK-token chunk). Such a row has no host copy
                     (cu_seqlens_host is None: its values change under a captured graph), ends in
                     empty documents, and was validated on the host before its buffers were filled.
    """

    cu_seqlens: torch.Tensor
    cu_seqlens_host: tuple[int, ...] | None
    max_seqlen: int
    chunk_indices: torch.Tensor | None = None

    @property
    def num_docs(self) -> int:
        return len(self.cu_seqlens_host) - 1

    @property
    def total_len(self) -> int:
        return self.cu_seqlens_host[-1]

    @property
    def lengths(self) -> list[int]:
        offsets = self.cu_seqlens_host
        return [offsets[i + 1] - offsets[i] for i in range(self.num_docs)]

    def to(self, device: torch.device | str) -> "PackedBatch":
        if self.chunk_indices is not None:
            if torch.device(device) != self.cu_seqlens.device:
                raise ValueError(
                    "a fixed-shape row (padfree.static_row.StaticRow) lives on its device; build it there."
                )
            return self
        return PackedBatch(offsets_to(self.cu_seqlens, device), self.cu_seqlens_host, self.max_seqlen)


def offsets_to(offsets: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`offsets` (a small host tensor) on `device`, without waiting for the GPU's queue.

    A blocking host-to-device copy synchronises the stream: it waits for every kernel queued before
    it (the GPU profiles counted one per training step). From pinned memory the copy is asynchronous,
    and torch keeps the pinned block alive until it has run. Any other move is a plain `.to`.
    """
    device = torch.device(device)
    if device.type == "cuda" and offsets.device.type == "cpu":
        return offsets.pin_memory().to(device, non_blocking=True)
    return offsets.to(device)


def packed_from_lengths(lengths: Sequence[int], device: torch.device | str = "cpu") -> PackedBatch:
    """Metadata for a row made of documents of the given lengths, in order."""
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError("a packed row needs at least one document; got an empty list of lengths.")
    bad = [n for n in lengths if n <= 0]
    if bad:
        raise ValueError(f"document lengths must be positive, got {bad}; drop empty documents before packing.")
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32, device=device)
    return PackedBatch(cu_seqlens, tuple(offsets), max(lengths))


def check_cu_seqlens_tensor(cu_seqlens: torch.Tensor) -> None:
    """cu_seqlens must be a 1-D integer tensor of N + 1 offsets, N >= 1 (checked without reading values)."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor [N + 1] with N >= 1, got {cu_seqlens.dtype} of shape "
            f"{tuple(cu_seqlens.shape)}."
        )


def document_positions(cu_seqlens: torch.Tensor, total_len: int) -> torch.Tensor:
    """[T] positions 0, 1, 2, ... inside each document, on the offsets' device.

    A handful of kernels whatever the number of documents (an arange per document was one launch
    each), and no host read: `output_size` is known on the host. Empty documents repeat nothing,
    so the padded offsets of a CUDA-graph row (padfree.cuda_graph) work too.
    """
    offsets = cu_seqlens.long()
    starts = torch.repeat_interleave(offsets[:-1], offsets[1:] - offsets[:-1], output_size=total_len)
    return torch.arange(total_len, device=offsets.device) - starts


TABLE_BACKENDS = ("fla", "triton")  # the backends that take chunk_indices (check_chunk_indices)


def check_chunk_indices(chunk_indices: torch.Tensor, cu_seqlens: torch.Tensor | None, backend: str) -> None:
    """The shape checks of FLA's precomputed `chunk_indices` (its values are trusted, never read).

    FLA's kernels read the table. padfree's Triton conv (backend "triton") accepts it and finds the boundaries
    from cu_seqlens on the device instead; with either, the offsets then stay on the device. The other backends
    read the offsets on the host, so a fixed-shape row (padfree.static_row) cannot run on them.
    """
    if backend not in TABLE_BACKENDS:
        raise ValueError(
            f"chunk_indices is FLA's precomputed chunk table, taken by backends {TABLE_BACKENDS}, but the backend here "
            f"is {backend!r}; drop chunk_indices (the {backend} backend reads the offsets itself) or use backend='fla'."
        )
    if cu_seqlens is None:
        raise ValueError("chunk_indices was given without cu_seqlens; it indexes the documents of cu_seqlens.")
    if chunk_indices.dim() != 2 or chunk_indices.shape[1] != 2 or chunk_indices.is_floating_point():
        raise ValueError(
            f"chunk_indices must be an integer [NT, 2] table of (document, chunk), got {chunk_indices.dtype} of shape "
            f"{tuple(chunk_indices.shape)}."
        )
    if chunk_indices.device != cu_seqlens.device or chunk_indices.dtype != cu_seqlens.dtype:
        raise ValueError(
            f"chunk_indices ({chunk_indices.dtype} on {chunk_indices.device}) must match cu_seqlens' dtype and device "
            f"({cu_seqlens.dtype} on {cu_seqlens.device})."
        )


def check_offsets(offsets: Sequence[int], total_len: int, row_name: str = "the row") -> None:
    """The one check of cu_seqlens values (host ints) that every op and the model run.

    They must start at 0, strictly increase (no empty document) and end at the row length.
    """
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {list(offsets[:8])}; the first document starts the row.")
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        if b <= a:
            raise ValueError(
                f"cu_seqlens must be strictly increasing, but offset {i + 1} is {b} after {a}; remove empty "
                "documents (padfree.collate never makes them)."
            )
    if offsets[-1] != total_len:
        raise ValueError(
            f"cu_seqlens ends at {offsets[-1]} but {row_name} has {total_len} tokens; the last offset must equal "
            "the row length (pad with a dummy document, as padfree.collate(pad_to=...) does)."
        )


def packed_from_cu_seqlens(cu_seqlens: torch.Tensor | Sequence[int], total_len: int) -> PackedBatch:
    """Validate `cu_seqlens` for a row of `total_len` tokens and wrap it (one host copy)."""
    device = cu_seqlens.device if isinstance(cu_seqlens, torch.Tensor) else torch.device("cpu")
    offsets = [int(x) for x in (cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens)]
    if len(offsets) < 2:
        raise ValueError(f"cu_seqlens must hold at least two offsets ([0, T] for one document), got {offsets}.")
    check_offsets(offsets, total_len)
    steps = [b - a for a, b in zip(offsets, offsets[1:])]
    return PackedBatch(torch.tensor(offsets, dtype=torch.int32, device=device), tuple(offsets), max(steps))


def packed_from_position_ids(position_ids: torch.Tensor) -> PackedBatch:
    """Metadata from position_ids `[1, T]` that count 0, 1, 2, ... inside each document.

    A document starts wherever the position is 0. Inside a document positions must go up by exactly
    one; anything else (a row not starting at 0, a skip, a step backwards to a non-zero value) is
    rejected, since it would otherwise be read as a silently wrong boundary.
    """
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(
            f"a packed row must have batch size 1, got position_ids of shape {tuple(position_ids.shape)}; "
            "pack the samples into one row with padfree.collate."
        )
    positions = position_ids[0].to("cpu", torch.long)  # the one host sync of a packed batch
    if positions.numel() == 0:
        raise ValueError("position_ids is empty; a packed row needs at least one token.")
    if positions[0].item() != 0:
        raise ValueError(f"position_ids must start at 0, got {positions[0].item()}; each document counts from 0.")
    starts = positions == 0
    steps_ok = starts[1:] | (positions[1:] == positions[:-1] + 1)
    if not bool(steps_ok.all()):
        i = int((~steps_ok).nonzero()[0]) + 1
        raise ValueError(
            f"position_ids jump from {positions[i - 1].item()} to {positions[i].item()} at token {i}: inside a "
            "document they must go up by 1, and a new document must restart at 0."
        )
    start_idx = starts.nonzero().flatten().tolist()
    return packed_from_lengths(
        [b - a for a, b in zip(start_idx, start_idx[1:] + [positions.numel()])], device=position_ids.device
    )


def position_ids_restart(position_ids: torch.Tensor | None) -> bool:
    """True when a single row's position_ids go back to 0 after the first token (a packed row)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return False
    return bool((position_ids[0, 1:] == 0).any())
