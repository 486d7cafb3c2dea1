"""padfree's own Triton kernels for the varlen causal depthwise conv1d (CUDA): a forward and a two-pass backward.

Why written here rather than taken from FLA: FLA 0.6's backward (`causal_conv1d_bwd_kernel`) took 439 us per
Qwen3.5-0.8B layer on an H100 (8,192 tokens x 6,144 channels, bf16), 5x its forward, after a second forward
that recomputes the pre-activation into a new [T, D] tensor: 11 ms of a 129 ms training step
(benchmarks/profile_train_step.py --cuda-graph, 2026-11-27). The backward here is two memory-bound passes:
dz = dy * act'(z) with z recomputed in registers (plus the weight's gradient per tile), then dx from dz.
A first version fused both into one kernel that recomputed z at each of the W shifts (W x W loads per tile
and four live fp32 tiles); in the 0.8b training step it ran no faster than FLA's.

Document boundaries: each token's document start, and the next document's start, are found from cu_seqlens
inside the kernels (a scan of the offsets in blocks of BN), so they need neither FLA's chunk table nor a host
copy of the offsets. They run unchanged under a CUDA graph whose offsets change between replays, and empty
documents (repeated offsets, as a fixed-shape row ends) select nothing.

Covered: weight [D, W], optional bias, activation None or silu, no initial or final state (those stay with
FLA's kernel). Accumulation in fp32; y and dx in x's dtype, dweight and dbias in the parameters' dtypes. The
weight gradient is summed per 64-token tile in the kernel, then over tiles by torch: deterministic.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TILE_T = 64  # tokens per program; fixed (not tuned) so the per-tile weight-gradient buffer has a known size
_OFFSETS_BLOCK = 128  # offsets scanned per step of _document_bounds
_INT32_MAX: tl.constexpr = tl.constexpr(2**31 - 1)


@triton.jit
def _document_bounds(cu_seqlens, num_offsets, o_t, BT: tl.constexpr, BN: tl.constexpr):
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
def _tap(x, o_t, o_d, s, start, m_t, m_d, D):
    """fp32 x[t - s] for the tile's tokens and channels; 0 where t - s precedes t's document or the tile's edge."""
    src = o_t - s
    m = (m_t & (src >= start))[:, None] & m_d[None, :]
    return tl.load(x + src.to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _weight_column(weight, o_d, m_d, s, W: tl.constexpr):
    """fp32 weight[:, W - 1 - s]: the column that meets tap s (x[t - s] for output t)."""
    return tl.load(weight + o_d * W + (W - 1 - s), mask=m_d, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W: tl.constexpr, BT: tl.constexpr,
                    BD: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """z = bias + sum_s weight[:, W - 1 - s] * x[t - s] in fp32: the forward's output before the activation,
    which the backward recomputes for the activation's derivative."""
    z = tl.zeros([BT, BD], dtype=tl.float32)
    if HAS_BIAS:
        z += tl.load(bias + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    for s in tl.static_range(W):
        z += _tap(x, o_t, o_d, s, start, m_t, m_d, D) * _weight_column(weight, o_d, m_d, s, W)[None, :]
    return z


def _configs():
    return [triton.Config({"BD": bd}, num_warps=warps) for bd, warps in ((32, 4), (64, 4), (128, 4), (128, 8))]


@triton.jit
def _forward_kernel(
    x, weight, bias, cu_seqlens, y, T, D, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
):  # fmt: skip
    i_t, i_d = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    start, _ = _document_bounds(cu_seqlens, num_offsets, o_t, BT, BN)
    z = _pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W, BT, BD, HAS_BIAS)
    if SILU:
        z = z * tl.sigmoid(z)
    p_y = y + o_t.to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p_y, z.to(y.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def _backward_dz_kernel(
    x, weight, bias, cu_seqlens, dy, dz, dw_tiles, db_tiles, T, D, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
):  # fmt: skip
    """dz = dy * act'(z) at each token (z recomputed), and per tile the weight's and bias's gradients:
    dweight[:, W - 1 - s] = sum_t dz[t] * x[t - s] over t whose tap s stays in its document."""
    i_t, i_d = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    m_td = m_t[:, None] & m_d[None, :]
    start, _ = _document_bounds(cu_seqlens, num_offsets, o_t, BT, BN)
    p_td = o_t.to(tl.int64)[:, None] * D + o_d[None, :]
    g = tl.load(dy + p_td, mask=m_td, other=0.0).to(tl.float32)
    if SILU:
        z = _pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W, BT, BD, HAS_BIAS)
        sig = tl.sigmoid(z)
        g = g * sig * (1.0 + z * (1.0 - sig))
    tl.store(dz + p_td, g, mask=m_td)
    for s in tl.static_range(W):  # the shifted x tiles again: from L1/L2, not kept live across the loop
        x_s = _tap(x, o_t, o_d, s, start, m_t, m_d, D)
        tl.store(dw_tiles + i_t * D * W + o_d * W + (W - 1 - s), tl.sum(g * x_s, axis=0), mask=m_d)
    if HAS_BIAS:
        tl.store(db_tiles + i_t * D + o_d, tl.sum(g, axis=0), mask=m_d)


@triton.jit
def _backward_dx_kernel(
    weight, cu_seqlens, dz, dx, T, D, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """dx[t] = sum_s weight[:, W - 1 - s] * dz[t + s] over the outputs t + s of t's document."""
    i_t, i_d = tl.program_id(0), tl.program_id(1)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_d < D
    _, end = _document_bounds(cu_seqlens, num_offsets, o_t, BT, BN)
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for s in tl.static_range(W):
        out = o_t + s
        m = (m_t & (out < end))[:, None] & m_d[None, :]  # end <= T
        g = tl.load(dz + out.to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.0)
        acc += g * _weight_column(weight, o_d, m_d, s, W)[None, :]
    p_dx = dx + o_t.to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p_dx, acc.to(dx.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


def _tuned(kernel, key):
    return triton.autotune(configs=_configs(), key=key)(kernel)


# Triton's interpreter (TRITON_INTERPRET=1, how these kernels were first debugged on a CPU) has no autotuner
# driver: there the kernels run with one fixed configuration.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRETED:
    _forward, _backward_dz, _backward_dx = _forward_kernel, _backward_dz_kernel, _backward_dx_kernel
else:
    _forward = _tuned(_forward_kernel, ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dz = _tuned(_backward_dz_kernel, ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dx = _tuned(_backward_dx_kernel, ["D", "W"])
_FIXED = {"BD": 64} if _INTERPRETED else {}


def _grid(T: int, D: int):
    return lambda meta: (triton.cdiv(T, TILE_T), triton.cdiv(D, meta["BD"]))


class _VarlenCausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_LD, weight, bias, cu_seqlens, silu: bool):
        L, D = x_LD.shape
        y_LD = torch.empty_like(x_LD)
        _forward[_grid(L, D)](
            x_LD, weight, bias, cu_seqlens, y_LD, L, D, cu_seqlens.numel(), W=weight.shape[1], BT=TILE_T,
            BN=_OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=silu, **_FIXED,
        )  # fmt: skip
        ctx.save_for_backward(x_LD, weight, bias, cu_seqlens)
        ctx.silu = silu
        return y_LD

    @staticmethod
    def backward(ctx, dy_LD):
        x_LD, weight, bias, cu_seqlens = ctx.saved_tensors
        L, D = x_LD.shape
        W = weight.shape[1]
        tiles = triton.cdiv(L, TILE_T)
        dz_LD = torch.empty(L, D, device=x_LD.device, dtype=torch.float32)  # fp32: dx sums W of them
        dw_tiles = torch.empty(tiles, D, W, device=x_LD.device, dtype=torch.float32)
        db_tiles = torch.empty(tiles, D, device=x_LD.device, dtype=torch.float32) if bias is not None else None
        _backward_dz[_grid(L, D)](
            x_LD, weight, bias, cu_seqlens, dy_LD.contiguous(), dz_LD, dw_tiles, db_tiles, L, D, cu_seqlens.numel(),
            W=W, BT=TILE_T, BN=_OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=ctx.silu, **_FIXED,
        )  # fmt: skip
        dx_LD = torch.empty_like(x_LD)
        _backward_dx[_grid(L, D)](
            weight, cu_seqlens, dz_LD, dx_LD, L, D, cu_seqlens.numel(), W=W, BT=TILE_T, BN=_OFFSETS_BLOCK, **_FIXED
        )  # fmt: skip
        dweight = dw_tiles.sum(0).to(weight.dtype)
        dbias = db_tiles.sum(0).to(bias.dtype) if bias is not None else None
        return dx_LD, dweight, dbias, None, None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    cu_seqlens: torch.Tensor | None,
) -> torch.Tensor:
    """y [B, T, D] of padfree.ops.conv1d.causal_conv1d without states; inputs already checked there."""
    B, T, D = x.shape
    if cu_seqlens is None:  # every batch row is one document of the flattened [B*T, D]
        cu_seqlens = torch.arange(0, B * T + 1, T, device=x.device, dtype=torch.int32)
    y_LD = _VarlenCausalConv1d.apply(
        x.reshape(B * T, D).contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        cu_seqlens.contiguous(), activation is not None,
    )  # fmt: skip
    return y_LD.view(B, T, D)
