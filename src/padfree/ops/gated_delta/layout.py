"""Where the documents of a row fall in its chunks: built once per call from host offsets.

Tokens stay in row order and the row is cut into chunks of L = 64 (the last padded with zeros), so
a chunk may hold the end of one document and the start of others. Each chunk is then made of
*segments*, one per document it touches:
- the first segment continues the state carried in from the previous chunk (or restarts it, when
  its document begins exactly at the chunk's start: a reset);
- any later segment is a document starting mid-chunk: it sees its own initial state (or zeros);
- only the last segment writes the state carried to the next chunk.
No padding between documents and no gather/scatter: a packed row costs what an unpacked one does,
plus a few masks. B unpacked rows (cu_seqlens=None) are R = B rows of one document each.

Legend: R rows, J chunks per row, L chunk length, N documents.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

CHUNK = 64


class Segments(NamedTuple):
    R: int
    J: int
    reset_J: torch.Tensor  # bool: a document starts at the chunk's first slot
    # Per-slot tensors, None when no chunk holds two documents (then every mask is all-true).
    same_JLL: torch.Tensor | None  # slots i, j belong to the same document
    seg_start_JL: torch.Tensor | None  # in-chunk position where the slot's segment starts
    first_JL: torch.Tensor | None  # slot is in the chunk's first segment
    last_JL: torch.Tensor | None  # slot is in the chunk's last segment
    # Host lists, read only with initial or final states: only those calls specialise on them when
    # compiled. The training path (neither) uses the tensors above alone: one graph per row length.
    reset_js: list[int]  # chunks where a document starts at slot 0 (all rows at once when R > 1)
    reset_docs: list[int]  # ... and which documents, for their initial states
    mid_docs: list[int]  # documents starting mid-chunk (R == 1)
    mid_c: list[int]  # ... their first chunk
    mid_s: list[int]  # ... their first slot in it
    mid_e: list[int]  # ... their last slot in it
    carry_js: list[int]  # chunks whose last segment starts mid-chunk and goes on into the next one
    carry_mids: list[int]  # ... which of mid_* it is
    # Each document's last chunk, row, first and last slot in that chunk, and whether it starts
    # inside that chunk after slot 0 (then it never saw the carried state).
    fin_c: list[int]
    fin_r: list[int]
    fin_s: list[int]
    fin_e: list[int]
    fin_mid: list[bool]


@torch.compiler.disable
def unpacked(B: int, T: int, device: torch.device) -> Segments:
    """B rows of one T-token document each."""
    J = -(-T // CHUNK)
    e = (T - 1) % CHUNK
    return Segments(
        B, J, torch.arange(J, device=device) == 0, None, None, None, None, [0], list(range(B)), [], [], [], [], [], [],
        [J - 1] * B, list(range(B)), [0] * B, [e] * B, [False] * B,
    )  # fmt: skip


@torch.compiler.disable  # host work; compiled callers must not specialise on the offsets
def packed(offsets: Sequence[int], device: torch.device) -> Segments:
    """One row holding documents [offsets[i], offsets[i + 1])."""
    T, L = offsets[-1], CHUNK
    J = -(-T // L)
    starts, ends = list(offsets[:-1]), list(offsets[1:])
    N = len(starts)
    reset_js, reset_docs, mid_docs, mid_c, mid_s, mid_e, carry_js, carry_mids = ([] for _ in range(8))
    for n, (s, t) in enumerate(zip(starts, ends)):
        c = s // L
        if s % L == 0:
            reset_js.append(c)
            reset_docs.append(n)
            continue
        mid_docs.append(n)
        mid_c.append(c)
        mid_s.append(s % L)
        mid_e.append(min(t - 1 - c * L, L - 1))
        if t > (c + 1) * L:  # it goes on in the next chunk, which starts from its state
            carry_js.append(c)
            carry_mids.append(len(mid_docs) - 1)
    fin_c = [(t - 1) // L for t in ends]
    fin_s = [max(s - c * L, 0) for s, c in zip(starts, fin_c)]
    fin_mid = [s > c * L for s, c in zip(starts, fin_c)]
    fin_e = [(t - 1) % L for t in ends]
    common = (reset_js, reset_docs, mid_docs, mid_c, mid_s, mid_e, carry_js, carry_mids)
    fins = (fin_c, [0] * N, fin_s, fin_e, fin_mid)
    reset_J = torch.zeros(J, dtype=torch.bool, device=device)
    reset_J[torch.tensor(reset_js, device=device)] = True
    if not mid_docs:  # every document starts on a chunk edge: no chunk holds two
        return Segments(1, J, reset_J, None, None, None, None, *common, *fins)

    # Per-slot document ids and segment starts, on the device; the tail padding belongs to the
    # last document (its zeros change no state).
    lengths = torch.tensor([t - s for s, t in zip(starts, ends)], device=device)
    pad = J * L - T
    doc_T = torch.repeat_interleave(torch.arange(N, device=device), lengths, output_size=T)
    start_T = torch.repeat_interleave(torch.tensor(starts, device=device), lengths, output_size=T)
    doc_JL = torch.cat([doc_T, doc_T.new_full((pad,), N - 1)]).view(J, L)
    start_JL = torch.cat([start_T, start_T.new_full((pad,), starts[-1])]).view(J, L)
    chunk_start_J1 = torch.arange(J, device=device)[:, None] * L
    seg_start_JL = (start_JL - chunk_start_J1).clamp(min=0)
    return Segments(
        1, J, reset_J,
        doc_JL[:, :, None] == doc_JL[:, None, :],
        seg_start_JL,
        doc_JL == doc_JL[:, :1],
        doc_JL == doc_JL[:, -1:],
        *common, *fins,
    )  # fmt: skip
