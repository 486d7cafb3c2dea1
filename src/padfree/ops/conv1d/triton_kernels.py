"""padfree's own Triton kernels for the varlen causal depthwise conv1d (CUDA): a forward and a two-pass backward.

Why written here rather than taken from FLA: FLA 0.6's backward (`causal_conv1d_bwd_kernel`) took 439 us per
Qwen3.5-0.8B layer on an H100 (8,192 tokens x 6,144 channels, bf16), 5x its forward, after a second forward
that recomputes the pre-activation into a new [T, D] tensor: 11 ms of a 129 ms training step
(benchmarks/profile_train_step.py --cuda-graph, 2026-11-27). The backward here is two memory-bound passes:
dz = dy * act'(z) with z recomputed in registers (plus the weight's gradient, summed over each program's
tokens in registers), then dx from dz.
A first version fused both into one kernel that recomputed z at each of the W shifts (W x W loads per tile
and four live fp32 tiles); in the 0.8b training step it ran no faster than FLA's.

Document boundaries: each token's document start, and the next document's start, are found from cu_seqlens
inside the kernels (triton_tiles.py), so they need neither FLA's chunk table nor a host copy of the offsets.
They run unchanged under a CUDA graph whose offsets change between replays, and empty documents (repeated
offsets, as a fixed-shape row ends) select nothing.

Covered: weight [D, W], optional bias, activation None or silu, no initial or final state (those stay with
FLA's kernel). Accumulation in fp32; y and dx in x's dtype, dweight and dbias in the parameters' dtypes. The
weight gradient is summed per program (DZ_TOKENS tokens) in the kernel, then over programs by torch: deterministic.

Split outputs (`split_sizes`, up to three parts, as Gated DeltaNet's q, k, v): the forward writes each part as
its own contiguous [L, d_i] tensor and the backward reads the parts' gradients where they are, so neither a
copy of strided column slices (FLA's input_guard made one: 4.3 ms of a 16,384-token step on an H200) nor a
torch.cat of the gradients (3.6 ms) is needed. Still one launch per pass: the channel blocks of a launch are
numbered part by part (`tile`), so a block lies in one part and picks that part's tensor.

Legend: L = B*T tokens of the flattened row, D channels, W kernel width, d_i the width of part i.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl

from padfree.ops.conv1d.triton_tiles import (
    NEAR_OFFSETS_BLOCK, OFFSETS_BLOCK, channel_block, document_starts, load_tap, offsets_within, pre_activation, tile,
    weight_column,
)  # fmt: skip

DZ_TOKENS = 256  # the dz pass's tokens per program (BT * STEPS); fixed so its weight-gradient buffer has a known size
MAX_PARTS = 3  # output tensors one launch writes; more parts are cut from the whole y (causal_conv1d)


# Tuning spaces, each holding the fastest configurations measured for its kernel on an H200 at the 0.8b row
# (benchmarks/gpu/bench_conv_variants.py, docs/benchmarks.md, eighteenth session): up to 5x between configurations
# of one kernel, the slow ones spilling registers. (tokens per program BT, channels BD, warps)
_FORWARD_CONFIGS = ((16, 128, 4), (64, 128, 4), (16, 64, 2), (32, 128, 4), (64, 64, 2))
# (BT, STEPS, BD, warps) of the dz pass: STEPS sub-tiles of BT tokens per program, BT * STEPS = DZ_TOKENS; the
# fastest of bench_conv_variants.py --dz-only on an H100 (186-201 us against 248 us for the best 64-token tile
# kernel it replaced, which reduced the weight's gradient across threads per tile)
_DZ_CONFIGS = ((16, 16, 64, 2), (16, 16, 32, 2), (16, 16, 32, 1), (16, 16, 64, 4), (16, 16, 128, 4))
_DX_CONFIGS = ((16, 128, 4), (32, 128, 4), (32, 64, 2), (16, 64, 2), (64, 256, 8))


def _configs(space):
    return [triton.Config({"BT": bt, "BD": bd}, num_warps=warps) for bt, bd, warps in space]


def _dz_configs():
    assert all(bt * steps == DZ_TOKENS for bt, steps, _, _ in _DZ_CONFIGS)
    return [triton.Config({"BT": bt, "STEPS": steps, "BD": bd}, num_warps=w) for bt, steps, bd, w in _DZ_CONFIGS]


@triton.jit
def _forward_kernel(
    x, weight, bias, cu_seqlens, y0, y1, y2, T, D, d0, d1, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
):  # fmt: skip
    """y = act(z) into the block's part: y0 [L, d0], y1 [L, d1] or y2 [L, D - d0 - d1]."""
    _, part, o_t, o_d, o_c, width, m_t, m_d, start, _ = tile(cu_seqlens, num_offsets, T, D, d0, d1, BT, BD, BN)
    z = pre_activation(x, weight, bias, o_t, o_d, start, m_t, m_d, D, W, BT, BD, HAS_BIAS)
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
def _tile_grad(dy0, dy1, dy2, part, p_dy, m_td, DY_PARTS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """fp32 dy of the tile from its part's gradient: dy0, dy1, dy2 (laid out as y0, y1, y2); bit i of DY_PARTS
    says part i has one."""
    if part == 0:
        g = _part_grad(dy0, p_dy, m_td, DY_PARTS & 1, BT, BD)
    elif part == 1:
        g = _part_grad(dy1, p_dy, m_td, DY_PARTS & 2, BT, BD)
    else:
        g = _part_grad(dy2, p_dy, m_td, DY_PARTS & 4, BT, BD)
    return g


@triton.jit
def _silu_backward(g, z):
    """dz = dy * silu'(z), silu'(z) = sig(z) * (1 + z * (1 - sig(z)))."""
    sig = tl.sigmoid(z)
    return g * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _backward_dz_kernel(
    x, weight, bias, cu_seqlens, dy0, dy1, dy2, dz, dw_tiles, db_tiles, T, D, d0, d1, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, DY_PARTS: tl.constexpr, STEPS: tl.constexpr,
):  # fmt: skip
    """dz = dy * act'(z) at each token (z recomputed), and per program the weight's and bias's gradients:
    dweight[:, W - 1 - s] = sum_t dz[t] * x[t - s] over t whose tap s stays in its document. A program covers
    STEPS sub-tiles of BT tokens (program_id(0) of cdiv(T, BT * STEPS)); its row of dw_tiles (and db_tiles)
    sums over those BT * STEPS tokens. dy comes in the forward's parts (dy0, dy1, dy2, laid out as y0, y1, y2);
    bit i of DY_PARTS says part i has one.

    Why looped: the kernel it replaced took one 64-token tile per program and reduced g * x_s over the tile's
    tokens W times, each a reduction across threads (shuffles, shared memory, a barrier across warps), then
    stored [BD, W]: ~250 us per 0.8b call (H100) for ~90 us of memory traffic. Here the products are added
    elementwise into W fp32 [BT, BD] accumulators (registers) and reduced once per program: 187 us.
    """
    i_p = tl.program_id(0)
    part, o_d, o_c, width, m_d = channel_block(D, d0, d1, BD)
    # The offsets that can start a document of the program's tokens, found once: each sub-tile then scans those
    # (a few, NEAR_OFFSETS_BLOCK at a time) rather than all of them in blocks of BN. The whole scan per
    # sub-tile, a [BT, BN] compare and a reduction across threads, was a large share of this kernel's time in
    # a development sweep (H200, the 0.8b row of 83 documents, the scan stubbed out; not in the results folder).
    lo, hi = offsets_within(cu_seqlens, num_offsets, i_p * STEPS * BT, (i_p + 1) * STEPS * BT, BN)
    w_cols = ()  # weight[:, W - 1 - s] per tap s: loaded once per program, not per tile (tuples: W is constexpr)
    acc = ()  # sum over the program's tokens of dz[t] * x[t - s], per tap s
    for s in tl.static_range(W):
        w_cols = w_cols + (weight_column(weight, o_d, m_d, s, W)[None, :],)
        acc = acc + (tl.zeros([BT, BD], dtype=tl.float32),)
    acc_b = tl.zeros([BT, BD], dtype=tl.float32)  # sum of dz: the bias's gradient (dropped without a bias)
    if HAS_BIAS:
        b_row = tl.load(bias + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    for i in range(STEPS):  # a loop, not unrolled: code size and registers stay those of one sub-tile
        o_t = (i_p * STEPS + i) * BT + tl.arange(0, BT)
        m_t = o_t < T
        start = document_starts(cu_seqlens, lo, hi, o_t, BT, NEAR_OFFSETS_BLOCK)
        m_td = m_t[:, None] & m_d[None, :]
        g = _tile_grad(dy0, dy1, dy2, part, o_t.to(tl.int64)[:, None] * width + o_c[None, :], m_td, DY_PARTS, BT, BD)
        # The W shifted x tiles are loaded once and serve both z and the products g * x_s (the tile kernel it
        # replaced loaded them twice: W more masked loads with their 64-bit addresses, though from L1). Kept in
        # x's dtype, bf16 taps cost W * BT * BD / (2 * threads) registers each thread: within budget beside the
        # accumulators for the tiles the sweep keeps (BT * BD / threads <= 32 elements each thread;
        # bench_conv_variants.py).
        taps = ()
        for s in tl.static_range(W):
            taps = taps + (load_tap(x, o_t, o_d, s, start, m_t, m_d, D),)
        if SILU:
            z = tl.zeros([BT, BD], dtype=tl.float32)
            if HAS_BIAS:
                z += b_row
            for s in tl.static_range(W):
                z += taps[s].to(tl.float32) * w_cols[s]
            g = _silu_backward(g, z)
        tl.store(dz + o_t.to(tl.int64)[:, None] * D + o_d[None, :], g, mask=m_td)
        summed = ()
        for s in tl.static_range(W):
            summed = summed + (acc[s] + g * taps[s].to(tl.float32),)
        acc = summed
        if HAS_BIAS:
            acc_b += g
    for s in tl.static_range(W):
        tl.store(dw_tiles + i_p * D * W + o_d * W + (W - 1 - s), tl.sum(acc[s], axis=0), mask=m_d)
    if HAS_BIAS:
        tl.store(db_tiles + i_p * D + o_d, tl.sum(acc_b, axis=0), mask=m_d)


@triton.jit
def _backward_dx_kernel(
    weight, cu_seqlens, dz, dx, T, D, num_offsets,
    W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """dx[t] = sum_s weight[:, W - 1 - s] * dz[t + s] over the outputs t + s of t's document."""
    _, _, o_t, o_d, _, _, m_t, m_d, _, end = tile(cu_seqlens, num_offsets, T, D, D, 0, BT, BD, BN)  # one part
    acc = tl.zeros([BT, BD], dtype=tl.float32)
    for s in tl.static_range(W):
        out = o_t + s
        m = (m_t & (out < end))[:, None] & m_d[None, :]  # end <= T
        g = tl.load(dz + out.to(tl.int64)[:, None] * D + o_d[None, :], mask=m, other=0.0).to(tl.float32)
        acc += g * weight_column(weight, o_d, m_d, s, W)[None, :]
    p_dx = dx + o_t.to(tl.int64)[:, None] * D + o_d[None, :]
    tl.store(p_dx, acc.to(dx.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


def _tuned(kernel, configs, key):
    return triton.autotune(configs=configs, key=key)(kernel)


# Triton's interpreter (TRITON_INTERPRET=1, how these kernels were first debugged on a CPU) has no autotuner
# driver: there the kernels run with one fixed configuration.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if _INTERPRETED:
    _forward, _backward_dz, _backward_dx = _forward_kernel, _backward_dz_kernel, _backward_dx_kernel
else:
    _forward = _tuned(_forward_kernel, _configs(_FORWARD_CONFIGS), ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dz = _tuned(_backward_dz_kernel, _dz_configs(), ["D", "W", "HAS_BIAS", "SILU"])
    _backward_dx = _tuned(_backward_dx_kernel, _configs(_DX_CONFIGS), ["D", "W"])
_FIXED = {"BT": 64, "BD": 64} if _INTERPRETED else {}
_FIXED_DZ = {"BT": 16, "STEPS": DZ_TOKENS // 16, "BD": 64} if _INTERPRETED else {}


def _grid(L: int, widths: tuple[int, ...]):
    """(token ranges of BT * STEPS tokens (STEPS: the dz kernel's; else 1), channel blocks numbered part by
    part: see channel_block)."""
    return lambda meta: (
        triton.cdiv(L, meta["BT"] * meta.get("STEPS", 1)), sum(triton.cdiv(d, meta["BD"]) for d in widths)
    )


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
        W=weight.shape[1], BN=OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=silu, **meta,
    )  # fmt: skip
    return parts


def launch_backward_dz(kernel, x_LD, weight, bias, cu_seqlens, silu: bool, widths: tuple[int, ...], dparts,
                       dz_dtype: torch.dtype, **meta):  # fmt: skip
    """(dz [L, D] in dz_dtype, dweight's per-program sums [programs, D, W], dbias's [programs, D] or None), by
    `kernel`: _backward_dz (autotuned, DZ_TOKENS tokens per program), or the raw kernel with explicit
    meta-parameters BT, STEPS, BD, num_warps (the variants bench; BT * STEPS tokens per program)."""
    L, D = x_LD.shape
    tokens = DZ_TOKENS if isinstance(kernel, triton.runtime.Autotuner) else meta["BT"] * meta["STEPS"]
    W, programs = weight.shape[1], triton.cdiv(L, tokens)
    dz_LD = torch.empty(L, D, device=x_LD.device, dtype=dz_dtype)
    dw_tiles = torch.empty(programs, D, W, device=x_LD.device, dtype=torch.float32)
    db_tiles = torch.empty(programs, D, device=x_LD.device, dtype=torch.float32) if bias is not None else None
    present = sum(1 << i for i, g in enumerate(dparts) if g is not None)
    dys = tuple(x_LD if g is None else g.contiguous() for g in dparts)  # x_LD: a placeholder, never read
    d0, d1 = _three(widths, 0)[:2]
    kernel[_grid(L, widths)](
        x_LD, weight, bias, cu_seqlens, *_three(dys, x_LD), dz_LD, dw_tiles, db_tiles, L, D, d0, d1,
        cu_seqlens.numel(), W=W, BN=OFFSETS_BLOCK, HAS_BIAS=bias is not None, SILU=silu, DY_PARTS=present, **meta,
    )  # fmt: skip
    return dz_LD, dw_tiles, db_tiles


def launch_backward_dx(kernel, weight, cu_seqlens, dz_LD, dx_dtype: torch.dtype, **meta):
    L, D = dz_LD.shape
    dx_LD = torch.empty(L, D, device=dz_LD.device, dtype=dx_dtype)
    kernel[_grid(L, (D,))](
        weight, cu_seqlens, dz_LD, dx_LD, L, D, cu_seqlens.numel(), W=weight.shape[1], BN=OFFSETS_BLOCK, **meta
    )  # fmt: skip
    return dx_LD


def _dz_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """dz between the backward's two passes: in a 16-bit x's own dtype, as PyTorch's autograd rounds the
    activation's gradient before the conv's backward (upstream's eager path does the same), else fp32. Half
    the bytes of an fp32 dz, written once and read W times: the two passes took 0.32 instead of 0.40 ms per
    0.8b layer on an H200 at their best configurations (bench_conv_variants.py, with the 64-token tile dz
    kernel of then). The weight's gradient is summed from the fp32 dz before
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
            **_FIXED_DZ,
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
