"""Splitting a packed row over the sequence-parallel ranks, and gathering per-token results back.

The row (from `padfree.collate`) is padded to a multiple of the degree P with one dummy document
(label -100: it trains nothing and no real document sees it), labels are shifted *before* the
split (so no rank needs its neighbour's first token to know its last target), and rank r keeps
tokens [r * T/P, (r + 1) * T/P). The document offsets stay global: every rank knows the whole row's
layout, which is host metadata and costs nothing to share.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from padfree.loss import IGNORE_INDEX, shift_labels
from padfree.parallel.comm import all_gather_stack
from padfree.parallel.mesh import SequenceParallel
from padfree.varlen import PackedBatch, offsets_to, packed_from_cu_seqlens


def shard_batch(batch: dict, sp: SequenceParallel, pad_token_id: int = 0) -> dict:
    """This rank's part of one packed row from `padfree.collate`, ready for `model(**local)`.

    Returns input_ids, position_ids and (when the batch has labels) shift_labels, each [1, T / P],
    plus the global cu_seq_lens_q/k and max_length_q/k of the row padded to T (a multiple of P).
    """
    input_ids = batch["input_ids"]
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or "cu_seq_lens_q" not in batch:
        raise ValueError(
            f"shard_batch takes one packed row from padfree.collate ([1, T] input_ids with cu_seq_lens_q), got "
            f"input_ids of shape {tuple(input_ids.shape)}{'' if 'cu_seq_lens_q' in batch else ' without cu_seq_lens_q'}."
        )
    P, r = sp.size, sp.rank
    T = input_ids.shape[1]
    pad = -T % P
    cu = batch["cu_seq_lens_q"].to("cpu", torch.int64)
    if pad:
        cu = torch.cat([cu, cu[-1:] + pad])
    packed = packed_from_cu_seqlens(cu, T + pad)
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.cat([torch.arange(n) for n in packed.lengths[: -1 if pad else None]])[None]
    rows = {
        "input_ids": F.pad(input_ids, (0, pad), value=pad_token_id),
        "position_ids": torch.cat([position_ids, torch.arange(pad, device=position_ids.device)[None]], dim=1),
    }
    if batch.get("labels") is not None:
        rows["shift_labels"] = shift_labels(F.pad(batch["labels"], (0, pad), value=IGNORE_INDEX))
    shard = (T + pad) // P
    local = {name: x[:, r * shard : (r + 1) * shard] for name, x in rows.items()}
    cu32 = packed.cu_seqlens.to(torch.int32)
    local.update(cu_seq_lens_q=cu32, cu_seq_lens_k=cu32.clone(), max_length_q=packed.max_seqlen,
                 max_length_k=packed.max_seqlen)  # fmt: skip
    return local


@dataclass(frozen=True)
class ShardedRow:
    """What a layer needs to know about its rank's slice [start, end) of a packed row of T tokens."""

    sp: SequenceParallel
    packed: PackedBatch  # the whole row's documents (global offsets)
    # The pieces of documents inside [start, end), offsets relative to start, and the global start of the
    # document holding token `start` (< start: it began earlier). Context parallelism reads both; Ulysses
    # neither. None in a fixed-shape row (padfree.static_row), whose offsets change under a CUDA graph
    # without a host read: the captured step runs Ulysses only.
    local: PackedBatch | None
    start: int
    end: int
    first_doc_start: int | None

    @property
    def shard_len(self) -> int:
        return self.end - self.start

    @property
    def continues_on_next_rank(self) -> bool:
        """Whether this rank's last document goes on past `end` (never on the last rank: the row ends there)."""
        return self.end not in self.packed.cu_seqlens_host

    @functools.cached_property
    def key_offsets(self) -> tuple[tuple[int, ...], torch.Tensor, int]:
        """Context-parallel attention's keys: this rank's documents from the first one's start (which
        may lie on an earlier rank) to `end`, as (host offsets, device offsets, longest). Built once per
        row, shared by every attention layer."""
        back = self.start - self.first_doc_start
        offsets = (0, *(o + back for o in self.local.cu_seqlens_host[1:]))
        device_offsets = offsets_to(torch.tensor(offsets, dtype=torch.int32), self.local.cu_seqlens.device)
        return offsets, device_offsets, max(b - a for a, b in zip(offsets, offsets[1:]))


def sharded_row(sp: SequenceParallel, packed: PackedBatch) -> ShardedRow:
    """The ShardedRow of this rank for a row whose global documents are `packed` (device offsets)."""
    T, P = packed.total_len, sp.size
    if T % P:
        raise ValueError(f"a sequence-parallel row must have a multiple of {P} tokens, got {T}; use shard_batch.")
    shard = T // P
    start, end = sp.rank * shard, (sp.rank + 1) * shard
    inner = [o - start for o in packed.cu_seqlens_host if start < o < end]
    local_offsets = [0, *inner, shard]
    local = packed_from_cu_seqlens(torch.tensor(local_offsets, dtype=torch.int32), shard).to(packed.cu_seqlens.device)
    first_doc_start = max(o for o in packed.cu_seqlens_host[:-1] if o <= start)
    return ShardedRow(sp, packed, local, start, end, first_doc_start)


def gather_sequence(x_local: torch.Tensor, sp: SequenceParallel, total_len: int | None = None) -> torch.Tensor:
    """[B, T / P, ...] per rank -> [B, T, ...] on every rank, cut to `total_len` (drops shard_batch's padding).

    Differentiable: the gradient of each rank's slice is the sum of what every rank's use of the
    gathered row sends back. Use it for per-token outputs (log-probs, entropies).
    """
    gathered = all_gather_stack(x_local, sp.group, sp.collectives)  # [P, B, T/P, ...]
    full = gathered.transpose(0, 1).reshape(x_local.shape[0], -1, *x_local.shape[2:])
    return full if total_len is None else full[:, :total_len]
