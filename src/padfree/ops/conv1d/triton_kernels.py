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

Split outputs (`split_sizes`, up to three parts, as Gated DeltaNet's q, k, v): the forward writes each part as
its own contiguous [L, d_i] tensor and the backward reads the parts' gradients where they are, so neither a
copy of strided column slices (FLA's input_guard made one: 4.3 ms of a 16,384-token step on an H200) nor a
torch.cat of the gradients (3.6 ms) is needed. Still one launch per pass: the channel blocks of a launch are
numbered part by part (`_tile`), so a block lies in one part and picks that part's tensor.

Legend: L = B*T tokens of the flattened row, D channels, W kernel width, d_i the width of part i.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl

DZ_TILE_T = 64  # the dz pass's tokens per program; fixed (not tuned) so its weight-gradient buffer has a known size
_OFFSETS_BLOCK = 128  # offsets scanned per step of _document_bounds
_INT32_MAX: tl.constexpr = tl.constexpr(2**31 - 1)
MAX_PARTS = 3  # output tensors one launch writes; more parts are cut from the whole y (causal_conv1d)


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
def _tile(cu_seqlens, num_offsets, T, D, d0, d1, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """The program's tile, as all three kernels see it: tokens o_t (tile program_id(0)) and BD channels.

    The channels form parts [0, d0), [d0, d0 + d1), [d0 + d1, D) (the forward's outputs; one part: d0 = D,
    d1 = 0) and channel blocks (program_id(1)) are numbered part by part, cdiv(d_i, BD) each: a block never
    straddles two parts, at the cost of at most two partly masked blocks more than cdiv(D, BD) in all.
    Returns (i_t, part, o_t, o_d: channels in x, o_c: channels in the part, width: d_part, m_t, m_d,
    and each token's document start and end).
    """
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    nb0 = tl.cdiv(d0, BD)
    nb01 = nb0 + tl.cdiv(d1, BD)
    part = (i_b >= nb0).to(tl.int32) + (i_b >= nb01).to(tl.int32)
    first_block = tl.where(part == 0, 0, tl.where(part == 1, nb0, nb01))
    first = tl.where(part == 0, 0, tl.where(part == 1, d0, d0 + d1))
    width = tl.where(part == 0, d0, tl.where(part == 1, d1, D - d0 - d1))
    o_t = i_t * BT + tl.arange(0, BT)
    o_c = (i_b - first_block) * BD + tl.arange(0, BD)
    m_t, m_d = o_t < T, o_c < width
    start, end = _document_bounds(cu_seqlens, num_offsets, o_t, BT, BN)
    return i_t, part, o_t, first + o_c, o_c, width, m_t, m_d, start, end


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


# Tuning spaces, each holding the fastest configurations measured for its kernel on an H200 at the 0.8b row
# (benchmarks/gpu/bench_conv_variants.py, docs/benchmarks.md, eighteenth session): up to 5x between configurations
# of one kernel, the slow ones spilling registers. (tokens per program BT, channels BD, warps)
_FORWARD_CONFIGS = ((16, 128, 4), (64, 128, 4), (16, 64, 2), (32, 128, 4), (64, 64, 2))
_DZ_CONFIGS = ((DZ_TILE_T, 64, 2), (DZ_TILE_T, 32, 2), (DZ_TILE_T, 128, 4), (DZ_TILE_T, 64, 4))
_DX_CONFIGS = ((16, 128, 4), (32, 128, 4), (32, 64, 2), (16, 64, 2), (64, 256, 8))


def _configs(space):
    return [triton.Config({"BT": bt, "BD": bd}, num_warps=warps) for bt, bd, warps in space]


@triton.jit
def _forward_kernel(
    x, weight, bias, cu_seqlens, y0, y1, y2, T, D, d0, d1, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
):  # fmt: skip
    """y = act(z) into the block's part: y0 [L, d0], y1 [L, d1] or y2 [L, D - d0 - d1]."""
    _, part, o_t, o_d, o_c, width, m_t, m_d, start, _ = _tile(cu_seqlens, num_offsets, T, D, d0, d1, BT, BD, BN)
    z = _pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W, BT, BD, HAS_BIAS)
    if SILU:
        z = z * tl.sigmoid(z)
    p_y = o_t.to(tl.int64)[:, None] * width + o_c[None, :]
    m_td = m_t[:, None] & m_d[None, :]
    z = z.to(y0.dtype.element_ty)
    if part == 0:  # uniform per program: one store
        tl.store(y0 + p_y, z, mask=m_td)
    elif part == 1:
        tl.store(y1 + p_y, z, mask=m_td)
    else:
        tl.store(y2 + p_y, z, mask=m_td)


@triton.jit
def _part_grad(dy, p_dy, m_td, PRESENT: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """fp32 dy of the tile from one part's gradient; zeros for a part whose gradient autograd left None."""
    if PRESENT:
        g = tl.load(dy + p_dy, mask=m_td, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BT, BD], dtype=tl.float32)
    return g


@triton.jit
def _backward_dz_kernel(
    x, weight, bias, cu_seqlens, dy0, dy1, dy2, dz, dw_tiles, db_tiles, T, D, d0, d1, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, DY_PARTS: tl.constexpr,
):  # fmt: skip
    """dz = dy * act'(z) at each token (z recomputed), and per tile the weight's and bias's gradients:
    dweight[:, W - 1 - s] = sum_t dz[t] * x[t - s] over t whose tap s stays in its document.
    dy comes in the forward's parts (dy0, dy1, dy2, laid out as y0, y1, y2); bit i of DY_PARTS says part i has one."""
    i_t, part, o_t, o_d, o_c, width, m_t, m_d, start, _ = _tile(cu_seqlens, num_offsets, T, D, d0, d1, BT, BD, BN)
    m_td = m_t[:, None] & m_d[None, :]
    p_dy = o_t.to(tl.int64)[:, None] * width + o_c[None, :]
    if part == 0:
        g = _part_grad(dy0, p_dy, m_td, DY_PARTS & 1, BT, BD)
    elif part == 1:
        g = _part_grad(dy1, p_dy, m_td, DY_PARTS & 2, BT, BD)
    else:
        g = _part_grad(dy2, p_dy, m_td, DY_PARTS & 4, BT, BD)
    if SILU:
        z = _pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W, BT, BD, HAS_BIAS)
        sig = tl.sigmoid(z)
        g = g * sig * (1.0 + z * (1.0 - sig))
    tl.store(dz + o_t.to(tl.int64)[:, None] * D + o_d[None, :], g, mask=m_td)
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
    _, _, o_t, o_d, _, _, m_t, m_d, _, end = _tile(cu_seqlens, num_offsets, T, D, D, 0, BT, BD, BN)  # one part
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for s in tl.static_range(W):
        out = o_t + s
        m = (m_t & (out < end))[:, None] & m_d[None, :]  # end <= T
        g = tl.load(dz + out.to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        acc += g * _weight_column(weight, o_d, m_d, s, W)[None, :]
    p_dx = dx + o_t.to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p_dx, acc.to(dx.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


def _tuned(kernel, space, key):
    return triton.autotune(configs=_configs(space), key=key)(kernel)


# Triton's interpreter (TRITON_INTERPRET=1, how these kernels were first debugged on a CPU) has no autotuner
# driver: there the kernels run with one fixed configuration.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRETED:
    _forward, _backward_dz, _backward_dx = _forward_kernel, _backward_dz_kernel, _backward_dx_kernel
else:
    _forward = _tuned(_forward_kernel, _FORWARD_CONFIGS, ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dz = _tuned(_backward_dz_kernel, _DZ_CONFIGS, ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dx = _tuned(_backward_dx_kernel, _DX_CONFIGS, ["D", "W"])
_FIXED = {"BT": 64, "BD": 64} if _INTERPRETED else {}


def _grid(L: int, widths: tuple[int, ...]):
    """(token tiles, channel blocks numbered part by part: see _tile)."""
    return lambda meta: (triton.cdiv(L, meta["BT"]), sum(triton.cdiv(d, meta["BD"]) for d in widths))


def _three(items: tuple, spare):
    """items padded with `spare` to three: the kernels' arguments for parts that do not exist (never accessed)."""
    return tuple(items) + (spare,) * (MAX_PARTS - len(items))


def launch_forward(kernel, x_LD, weight, bias, cu_seqlens, silu: bool, widths: tuple[int, ...], **meta):
    """The forward's parts [L, d_i] of `widths`, computed by `kernel`: _forward (autotuned), or the raw kernel with
    explicit meta-parameters BT, BD, num_warps (benchmarks/gpu/bench_conv_variants.py)."""
    L, D = x_LD.shape
    parts = tuple(torch.empty(L, d, device=x_LD.device, dtype=x_LD.dtype) for d in widths)
    d0, d1 = _three(widths, 0)[:2]
    kernel[_grid(L, widths)](
        x_LD, weight, bias, cu_seqlens, *_three(parts, parts[0]), L, D, d0, d1, cu_seqlens.numel(),
        W=weight.shape[1], BN=_OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=silu, **meta,
    )  # fmt: skip
    return parts


def launch_backward_dz(kernel, x_LD, weight, bias, cu_seqlens, silu: bool, widths: tuple[int, ...], dparts,
                       dz_dtype: torch.dtype, **meta):  # fmt: skip
    """(dz [L, D] in dz_dtype, dweight's per-tile sums [tiles, D, W], dbias's [tiles, D] or None). The token tile
    is DZ_TILE_T unless meta gives BT (the variants bench)."""
    L, D = x_LD.shape
    BT = meta.pop("BT", DZ_TILE_T)
    W, tiles = weight.shape[1], triton.cdiv(L, BT)
    dz_LD = torch.empty(L, D, device=x_LD.device, dtype=dz_dtype)
    dw_tiles = torch.empty(tiles, D, W, device=x_LD.device, dtype=torch.float32)
    db_tiles = torch.empty(tiles, D, device=x_LD.device, dtype=torch.float32) if bias is not None else None
    present = sum(1 << i for i, g in enumerate(dparts) if g is not None)
    dys = tuple(x_LD if g is None else g.contiguous() for g in dparts)  # x_LD: a placeholder, never read
    d0, d1 = _three(widths, 0)[:2]
    kernel[_grid(L, widths)](
        x_LD, weight, bias, cu_seqlens, *_three(dys, x_LD), dz_LD, dw_tiles, db_tiles, L, D, d0, d1,
        cu_seqlens.numel(), W=W, BN=_OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=silu,
        DY_PARTS=present, **meta, **({} if isinstance(kernel, triton.runtime.Autotuner) else {"BT": BT}),
    )  # fmt: skip
    return dz_LD, dw_tiles, db_tiles


def launch_backward_dx(kernel, weight, cu_seqlens, dz_LD, dx_dtype: torch.dtype, **meta):
    L, D = dz_LD.shape
    dx_LD = torch.empty(L, D, device=dz_LD.device, dtype=dx_dtype)
    kernel[_grid(L, (D,))](
        weight, cu_seqlens, dz_LD, dx_LD, L, D, cu_seqlens.numel(), W=weight.shape[1], BN=_OFFSETS_BLOCK, **meta
    )  # fmt: skip
    return dx_LD


def _dz_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """dz between the backward's two passes: in a 16-bit x's own dtype, as PyTorch's autograd rounds the
    activation's gradient before the conv's backward (upstream's eager path does the same), else fp32. Half
    the bytes of an fp32 dz, written once and read W times: the two passes took 0.41 instead of 0.50 ms per
    0.8b layer on an H200 (bench_conv_variants.py). The weight's gradient is summed from the fp32 dz before
    the rounding."""
    return x_dtype if x_dtype in (torch.bfloat16, torch.float16) else torch.float32


class _VarlenCausalConv1d(torch.autograd.Function):
    """x [L, D] -> its conv as parts [L, d_i] of `widths` (one part of width D: y itself), each contiguous."""

    @staticmethod
    def forward(ctx, x_LD, weight, bias, cu_seqlens, silu: bool, widths: tuple[int, ...]):
        parts = launch_forward(_forward, x_LD, weight, bias, cu_seqlens, silu, widths, **_FIXED)
        ctx.save_for_backward(x_LD, weight, bias, cu_seqlens)
        ctx.silu, ctx.widths = silu, widths
        ctx.set_materialize_grads(False)  # an unused part's gradient stays None: the kernel reads it as zeros
        return parts

    @staticmethod
    def backward(ctx, *dparts):
        x_LD, weight, bias, cu_seqlens = ctx.saved_tensors
        if all(g is None for g in dparts):
            return None, None, None, None, None, None
        dz_LD, dw_tiles, db_tiles = launch_backward_dz(
            _backward_dz, x_LD, weight, bias, cu_seqlens, ctx.silu, ctx.widths, dparts, _dz_dtype(x_LD.dtype),
            **{k: v for k, v in _FIXED.items() if k != "BT"},  # its tile is DZ_TILE_T
        )  # fmt: skip
        dx_LD = launch_backward_dx(_backward_dx, weight, cu_seqlens, dz_LD, x_LD.dtype, **_FIXED)
        dweight = dw_tiles.sum(0).to(weight.dtype)
        dbias = db_tiles.sum(0).to(bias.dtype) if bias is not None else None
        return dx_LD, dweight, dbias, None, None, None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    cu_seqlens: torch.Tensor | None,
    split_sizes: Sequence[int] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """y [B, T, D] of padfree.ops.conv1d.causal_conv1d without states, or with split_sizes (checked there, as
    all inputs) the tuple of its contiguous parts [B, T, d_i], written by the forward kernel itself."""
    B, T, D = x.shape
    widths = (D,) if split_sizes is None else tuple(int(d) for d in split_sizes)
    if len(widths) > MAX_PARTS:  # not needed by any layer: cut the parts from the whole y
        y = causal_conv1d(x, weight, bias, activation, cu_seqlens)
        return tuple(p.contiguous() for p in torch.split(y, widths, dim=-1))
    if cu_seqlens is None:  # every batch row is one document of the flattened [B*T, D]
        cu_seqlens = torch.arange(0, B * T + 1, T, device=x.device, dtype=torch.int32)
    parts = _VarlenCausalConv1d.apply(
        x.reshape(B * T, D).contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        cu_seqlens.contiguous(), activation is not None, widths,
    )  # fmt: skip
    parts = tuple(p.view(B, T, p.shape[1]) for p in parts)
    return parts[0] if split_sizes is None else parts
