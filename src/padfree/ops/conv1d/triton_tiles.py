"""Where a program's tokens and channels lie, for padfree's conv kernels (triton_kernels.py): document bounds
found from cu_seqlens on the GPU, the part-by-part channel blocks, and the shifted x taps of the causal conv.

Document boundaries: each token's document start (and the next document's start) come from a scan of the
offsets, so the kernels need neither FLA's chunk table nor a host copy of the offsets and run unchanged under a
CUDA graph whose offsets change between replays; empty documents (repeated offsets, as a fixed-shape row ends)
select nothing. Legend as in triton_kernels.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

OFFSETS_BLOCK = 128  # offsets scanned per step of document_bounds
NEAR_OFFSETS_BLOCK: tl.constexpr = tl.constexpr(16)  # per step of document_starts: few offsets are near a tile
_INT32_MAX: tl.constexpr = tl.constexpr(2**31 - 1)


@triton.jit
def document_bounds(cu_seqlens, num_offsets, o_t, BT: tl.constexpr, BN: tl.constexpr):
    """(start, end) of the document holding each token of o_t: the largest offset <= t and the smallest > t."""
    start = tl.zeros([BT], dtype=tl.int32)
    end = tl.full([BT], _INT32_MAX, dtype=tl.int32)
    for i in range(0, num_offsets, BN):
        o_n = i + tl.arange(0, BN)
        cu = tl.load(cu_seqlens + o_n, mask=o_n < num_offsets, other=-1).to(tl.int32)  # -1: never > t
        start = tl.maximum(start, tl.max(tl.where(cu[None, :] <= o_t[:, None], cu[None, :], 0), axis=1))
        end = tl.minimum(end, tl.min(tl.where(cu[None, :] > o_t[:, None], cu[None, :], _INT32_MAX), axis=1))
    return start, end


@triton.jit
def offsets_within(cu_seqlens, num_offsets, first, last, BN: tl.constexpr):
    """(lo, hi): the offsets that can start the document of a token of [first, last), indices lo (the start of
    first's document: the last offset <= first) to hi - 1 (the last offset < last). The offsets being sorted,
    the largest offset <= t among them is the largest of all, for each t of [first, last)."""
    n_le = tl.zeros([BN], dtype=tl.int32)  # offsets <= first, per lane (in all >= 1: cu_seqlens[0] = 0)
    n_lt = tl.zeros([BN], dtype=tl.int32)  # offsets < last
    for i in range(0, num_offsets, BN):
        o_n = i + tl.arange(0, BN)
        m = o_n < num_offsets
        cu = tl.load(cu_seqlens + o_n, mask=m, other=0).to(tl.int32)
        n_le += (m & (cu <= first)).to(tl.int32)
        n_lt += (m & (cu < last)).to(tl.int32)
    return tl.sum(n_le, axis=0) - 1, tl.sum(n_lt, axis=0)


@triton.jit
def document_starts(cu_seqlens, lo, hi, o_t, BT: tl.constexpr, BN: tl.constexpr):
    """The start of each token's document (as document_bounds), scanning only offsets lo to hi - 1
    (offsets_within)."""
    start = tl.zeros([BT], dtype=tl.int32)
    for i in range(lo, hi, BN):
        o_n = i + tl.arange(0, BN)
        cu = tl.load(cu_seqlens + o_n, mask=o_n < hi, other=-1).to(tl.int32)  # -1: never > t
        start = tl.maximum(start, tl.max(tl.where(cu[None, :] <= o_t[:, None], cu[None, :], 0), axis=1))
    return start


@triton.jit
def channel_block(D, d0, d1, BD: tl.constexpr):
    """The program's BD channels (block program_id(1)), as all the kernels see them.

    The channels form parts [0, d0), [d0, d0 + d1), [d0 + d1, D) (the forward's outputs; one part: d0 = D,
    d1 = 0) and channel blocks are numbered part by part, cdiv(d_i, BD) each: a block never straddles two
    parts, at the cost of at most two partly masked blocks more than cdiv(D, BD) in all.
    Returns (part, o_d: channels in x, o_c: channels in the part, width: d_part, m_d).
    """
    i_b = tl.program_id(1)
    nb0 = tl.cdiv(d0, BD)
    nb01 = nb0 + tl.cdiv(d1, BD)
    part = (i_b >= nb0).to(tl.int32) + (i_b >= nb01).to(tl.int32)
    first_block = tl.where(part == 0, 0, tl.where(part == 1, nb0, nb01))
    first = tl.where(part == 0, 0, tl.where(part == 1, d0, d0 + d1))
    width = tl.where(part == 0, d0, tl.where(part == 1, d1, D - d0 - d1))
    o_c = (i_b - first_block) * BD + tl.arange(0, BD)
    return part, first + o_c, o_c, width, o_c < width


@triton.jit
def tile(cu_seqlens, num_offsets, T, D, d0, d1, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """The program's tile: tokens o_t (tile program_id(0)) and BD channels (channel_block).
    Returns (i_t, part, o_t, o_d, o_c, width, m_t, m_d, and each token's document start and end)."""
    i_t = tl.program_id(0)
    part, o_d, o_c, width, m_d = channel_block(D, d0, d1, BD)
    o_t = i_t * BT + tl.arange(0, BT)
    start, end = document_bounds(cu_seqlens, num_offsets, o_t, BT, BN)
    return i_t, part, o_t, o_d, o_c, width, o_t < T, m_d, start, end


@triton.jit
def load_tap(x, o_t, o_d, s, start, m_t, m_d, D):
    """x[t - s] in x's dtype for the tile's tokens and channels; 0 where t - s precedes t's document or the
    tile's edge."""
    src = o_t - s
    m = (m_t & (src >= start))[:, None] & m_d[None, :]
    return tl.load(x + src.to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.0)


@triton.jit
def tap(x, o_t, o_d, s, start, m_t, m_d, D):
    """fp32 x[t - s] (load_tap)."""
    return load_tap(x, o_t, o_d, s, start, m_t, m_d, D).to(tl.float32)


@triton.jit
def weight_column(weight, o_d, m_d, s, W: tl.constexpr):
    """fp32 weight[:, W - 1 - s]: the column that meets tap s (x[t - s] for output t)."""
    return tl.load(weight + o_d * W + (W - 1 - s), mask=m_d, other=0.0).to(tl.float32)


@triton.jit
def pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W: tl.constexpr, BT: tl.constexpr,
                    BD: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """z = bias + sum_s weight[:, W - 1 - s] * x[t - s] in fp32: the forward's output before the activation,
    which the backward recomputes for the activation's derivative."""
    z = tl.zeros([BT, BD], dtype=tl.float32)
    if HAS_BIAS:
        z += tl.load(bias + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    for s in tl.static_range(W):
        z += tap(x, o_t, o_d, s, start, m_t, m_d, D) * weight_column(weight, o_d, m_d, s, W)[None, :]
    return z
