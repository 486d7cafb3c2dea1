"""Fixed-shape packed rows: what a CUDA graph of the training step (padfree.cuda_graph) replays on.

A graph replays fixed kernels with fixed arguments, so every shape and every host-side value of the
step must be the same for every row. In a packed row of fixed length T (`padfree.collate(pad_to=T)`)
only the documents change. `StaticRow` gives them a fixed shape (docs/cuda-graph-step.md):
- `cu_seqlens` holds `max_docs + 2` offsets: the row's N documents, then empty documents at T.
- `chunk_indices` is FLA's (document, 64-token chunk) table, with `T // 64 + max_docs + 1` entries.
  The entries after the real chunks name a chunk of the last (empty) document. Every FLA kernel
  masks such a chunk away, because it computes the document's length as 0.
  FLA's own padding marks unused entries with document -1, which its GDN and conv kernels do not
  check. That is why padfree pads with an empty document instead.
- Attention gets `max_seqlen = T`. The flash kernels size their grid with it and skip the blocks
  past each document's end.
Each row is checked on the host with the checks every packed row gets (padfree.models.causal_lm),
then its token ids, labels and tables are copied into fixed device buffers (from pinned memory,
without blocking). The ops are told to trust the values (`chunk_indices`, `trust_offsets`), because
reading them back would sync and break capture.

With sequence parallelism (Ulysses only) every rank fills from the whole row, as padfree.collate made
it: the tables stay the whole row's (Ulysses runs the ops on all T tokens of its heads), while the
token ids and targets are this rank's T / P slice, the labels shifted before the cut as
padfree.parallel.shard_batch does. The row length must then be a multiple of P.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from padfree.loss import causal_lm_loss, shift_labels
from padfree.models.causal_lm import _NO_MASKS, PACKED_KWARG, _check_packed_row, _find_packed
from padfree.parallel.shard import ShardedRow
from padfree.varlen import CHUNK, PackedBatch, document_positions

__all__ = [
    "StaticRow", "check_row", "chunk_table", "fla_tensor_cache_off", "padded_offsets", "patched_settings",
    "row_values", "static_row_logits", "static_row_loss",
]


def padded_offsets(offsets: Sequence[int], max_docs: int) -> list[int]:
    """The row's offsets followed by empty documents at its end: `max_docs + 2` offsets in all.

    At least one empty document always follows the real ones. The padding chunks of `chunk_table`
    point at it.
    """
    offsets = [int(o) for o in offsets]
    num_docs = len(offsets) - 1
    if num_docs > max_docs:
        raise ValueError(
            f"this row holds {num_docs} documents, more than max_docs={max_docs} of the captured step; build the "
            f"step with a larger max_docs (each spare slot costs a few idle GPU blocks), or pack fewer documents per "
            "row."
        )
    return offsets + [offsets[-1]] * (max_docs + 1 - num_docs)


def chunk_slots(row_tokens: int, max_docs: int) -> int:
    """Entries of a fixed-shape chunk table: an upper bound of sum(ceil(len_i / 64)) over <= max_docs documents."""
    return math.ceil(row_tokens / CHUNK) + max_docs + 1


def chunk_table(padded: Sequence[int], slots: int) -> list[tuple[int, int]]:
    """FLA's `chunk_indices` for these offsets: (document, chunk within it) for each 64-token chunk, in order,
    then (last document, 0) up to `slots` entries. The last document must be empty (see `padded_offsets`)."""
    if padded[-1] != padded[-2]:
        raise ValueError("the offsets must end with an empty document; pad them with padded_offsets first.")
    table = [(doc, chunk) for doc, (start, end) in enumerate(zip(padded, padded[1:]))
             for chunk in range(math.ceil((end - start) / CHUNK))]  # fmt: skip
    if len(table) > slots:
        raise ValueError(f"{len(table)} chunks do not fit a table of {slots} entries; this is a padfree bug.")
    return table + [(len(padded) - 2, 0)] * (slots - len(table))


def check_row(batch: dict, row_tokens: int, max_docs: int) -> list[int]:
    """The row's offsets (host ints) after every check a fixed-shape row needs; raises ValueError naming the fix.

    The ops trust a fixed-shape row's offsets (reading them back would sync), so this is their one check:
    the row length and document count of the buffers, then what every packed row is checked for
    (padfree.models.causal_lm): valid cu_seq_lens, equal for q and k, no padding mask, consistent
    position_ids. Free for padfree.collate's host tensors; tensors already on the GPU cost a sync.
    """
    for key in ("input_ids", "labels", "cu_seq_lens_q"):
        if batch.get(key) is None:
            raise ValueError(f"the batch has no {key!r}; build it with padfree.collate(samples, pad_to={row_tokens}).")
    ids, labels = batch["input_ids"], batch["labels"]
    if tuple(ids.shape) != (1, row_tokens) or labels.shape != ids.shape:
        raise ValueError(
            f"input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must both be [1, {row_tokens}]: the "
            f"captured step has a fixed row length; collate with padfree.collate(samples, pad_to={row_tokens})."
        )
    call = dict(batch)  # the shared checks pop and fill keys; the caller's batch stays as it was
    packed = _find_packed(call, total_len=row_tokens)
    _check_packed_row(call, packed, batch_size=1)
    offsets = list(packed.cu_seqlens_host)
    padded_offsets(offsets, max_docs)  # raises on too many documents
    return offsets


class StaticRow:
    """Fixed device buffers for packed rows of `row_tokens` tokens with at most `max_docs` documents.

    `fill(batch)` checks a `padfree.collate(..., pad_to=row_tokens)` batch on the host and copies it in.
    `packed` is the PackedBatch every layer reads: its values change with each fill, its tensors never do.
    With `sp` (a SequenceParallel whose layers all run Ulysses), `input_ids` and `labels` hold this
    rank's slice of the row and `labels` are the shifted targets; `sharded` is the ShardedRow the
    layers read.
    """

    def __init__(self, row_tokens: int, max_docs: int, device: torch.device | str, sp=None):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"a fixed-shape row is for CUDA graphs; got device {device}.")
        if row_tokens < 1 or max_docs < 1:
            raise ValueError(f"row_tokens ({row_tokens}) and max_docs ({max_docs}) must be positive.")
        degree = 1 if sp is None else sp.size
        if row_tokens % degree:
            raise ValueError(
                f"row_tokens={row_tokens} is not a multiple of the sequence-parallel degree {degree}; pick a row "
                f"length divisible by it and collate with padfree.collate(samples, pad_to=row_tokens)."
            )
        self.row_tokens, self.max_docs, self.device, self.sp = row_tokens, max_docs, device, sp
        shard = row_tokens // degree
        self.start = 0 if sp is None else sp.rank * shard
        self.end = self.start + shard
        self.input_ids = torch.zeros(1, shard, dtype=torch.long, device=device)
        self.labels = torch.full((1, shard), -100, dtype=torch.long, device=device)
        self.cu_seqlens = torch.zeros(max_docs + 2, dtype=torch.int32, device=device)
        self.chunk_indices = torch.zeros(chunk_slots(row_tokens, max_docs), 2, dtype=torch.int32, device=device)
        self.packed = PackedBatch(self.cu_seqlens, None, row_tokens, chunk_indices=self.chunk_indices)
        self.sharded = None if sp is None else ShardedRow(sp, self.packed, None, self.start, self.end, None)

    def fill(self, batch: dict) -> None:
        """Check `batch`, then copy it into the buffers, queued on the current stream (no host wait)."""
        rows = None if self.sp is None else slice(self.start, self.end)
        values = row_values(batch, self.row_tokens, self.max_docs, rows)
        # pinned host tensors: the copies are asynchronous, and torch keeps each block alive until its copy has run
        for name, host in values.items():
            buffer = getattr(self, name)
            host = host.to(buffer.dtype)
            buffer.copy_(host.pin_memory() if host.device.type == "cpu" else host, non_blocking=True)


def row_values(batch: dict, row_tokens: int, max_docs: int, rows: slice | None = None) -> dict[str, torch.Tensor]:
    """What StaticRow.fill copies into its buffers, by buffer name, after `check_row`: input_ids and labels
    (with `rows`, a sequence-parallel rank's slice: its tokens and their shifted targets), cu_seqlens padded
    with empty documents, and FLA's chunk table."""
    offsets = check_row(batch, row_tokens, max_docs)
    padded = padded_offsets(offsets, max_docs)
    ids, labels = batch["input_ids"], batch["labels"]
    if rows is not None:  # shifted before the cut: a rank's last target is its neighbour's first token
        ids, labels = ids[:, rows], shift_labels(labels)[:, rows]
    return {
        "input_ids": ids, "labels": labels, "cu_seqlens": torch.tensor(padded, dtype=torch.int32),
        "chunk_indices": torch.tensor(chunk_table(padded, chunk_slots(row_tokens, max_docs)), dtype=torch.int32),
    }  # fmt: skip


def patched_settings(model) -> dict:
    """padfree.patch's settings of `model`; raises when it is not patched."""
    from padfree.models.patch import _MARK, _unwrap

    settings = getattr(_unwrap(model), _MARK, None)
    if settings is None:
        raise ValueError("the model is not patched; call padfree.patch(model) first.")
    return settings


def _hidden(model, row: StaticRow) -> torch.Tensor:
    """The language model's last hidden states on the row in `row`'s buffers (this rank's slice under sp)."""
    from padfree.models.patch import _unwrap

    inner = _unwrap(model)
    positions = document_positions(row.cu_seqlens, row.row_tokens)[row.start : row.end]
    outputs = inner.model(
        input_ids=row.input_ids, position_ids=positions.unsqueeze(0), attention_mask=dict(_NO_MASKS),
        use_cache=False, **{PACKED_KWARG: row.packed if row.sharded is None else row.sharded},
    )  # fmt: skip
    return outputs.last_hidden_state


def static_row_loss(model, row: StaticRow, num_items_in_batch: torch.Tensor | None = None) -> torch.Tensor:
    """The patched model's loss on the row in `row`'s buffers: what `model(**batch, num_items_in_batch=...).loss`
    computes for the batch last filled in, through padfree's fused loss; no host read, so it can be captured.
    Under sequence parallelism: this rank's share (its tokens' sum over the whole row's count)."""
    from padfree.models.patch import _unwrap

    settings = patched_settings(model)
    inner = _unwrap(model)
    # under sp the buffer holds the shifted targets of this rank's slice
    labels, targets = (row.labels, None) if row.sp is None else (None, row.labels)
    return causal_lm_loss(
        _hidden(model, row), inner.lm_head.weight, labels, num_items_in_batch, lm_head_bias=inner.lm_head.bias,
        shift_labels_BT=targets, softmax_backend=settings["loss_backend"],
    )  # fmt: skip


def static_row_logits(model, row: StaticRow) -> torch.Tensor:
    """[1, T, vocab] logits of the row in `row`'s buffers (the bench's correctness gate compares them per document);
    this rank's [1, T / P, vocab] under sequence parallelism."""
    from padfree.models.patch import _unwrap

    return _unwrap(model).lm_head(_hidden(model, row))


@contextlib.contextmanager
def fla_tensor_cache_off():
    """FLA memoises offset helpers by tensor identity. The fixed buffers keep their identity while their values
    change, so a memoised result from one row would be replayed for the next. Off while padfree runs on them."""
    import fla.utils

    before = getattr(fla.utils, "FLA_DISABLE_TENSOR_CACHE", False)
    fla.utils.FLA_DISABLE_TENSOR_CACHE = True
    try:
        yield
    finally:
        fla.utils.FLA_DISABLE_TENSOR_CACHE = before
