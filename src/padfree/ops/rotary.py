"""Partial rotary embedding of attention's q and k: one Triton kernel per tensor and direction (CUDA).

Why: transformers' `apply_rotary_pos_emb` (Qwen3.5, Qwen3.5-MoE and Qwen3-Next share it) slices q and k
into rotary and pass-through parts, builds `rotate_half` with a torch.cat, multiplies, adds and torch.cat's
the pass-through back; its backward is a zeros + copy per slice. In a GPU profile of the Qwen3.5-0.8B
training step (8,192-token rows, bf16, H100) these small kernels took ~2 ms per step. Here each tensor is
read once and written once, forward and backward.

The math is upstream's, with h = R / 2 and c, s the cos and sin of the token (the same for every head):

    y_d = x_d c_d - x_{d+h} s_d     (d < h)          y_d = x_d      (R <= d < D: passed through)
    y_d = x_d c_d + x_{d-h} s_d     (h <= d < R)

computed in fp32 from the loaded values and rounded once to x's dtype (upstream in bf16 rounds each product
and sum). Under autocast (bf16-mixed training: fp32 cos/sin, bf16 q and k) upstream's result is fp32, which
the attention layer then casts to the autocast dtype; the kernel returns that cast result directly (the fp32
math, rounded once). Anything else the kernel does not cover (CPU, other mixed dtypes, cos/sin that need a
gradient, an odd R, other shapes) goes to upstream's function.

Legend: B batch (1 for a packed row), T tokens, H heads (HKV for k), D head dim, R rotary dim (<= D).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch wheels (the CI machine) have no Triton: the upstream path still works
    triton = None

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TILE = 4096  # elements per program: BN rows of BD; enough in flight per program, the grid does the rest


def _rotary_kernel(
    x, cos, sin, out, rows, H, cos_stride, sin_stride,
    D: tl.constexpr, R: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, TRANSPOSE: tl.constexpr,
):  # fmt: skip
    """BN rows of x [rows = B*T*H, D] (row = token * H + head) -> out, the rotation or (TRANSPOSE) its transpose."""
    o_n = tl.program_id(0) * BN + tl.arange(0, BN)
    o_d = tl.arange(0, BD)
    first = o_d < R // 2
    o_p = tl.where(first, o_d + R // 2, o_d - R // 2)  # each rotary dim's partner in rotate_half
    m_n = o_n < rows
    m = m_n[:, None] & (o_d < D)[None, :]
    m_rot = m_n[:, None] & (o_d < R)[None, :]
    p_row = x + o_n.to(tl.int64)[:, None] * D  # int64: B*T*H*D passes 2^31 at ~1M tokens of 8 heads
    o_cs = (o_n // H).to(tl.int64)[:, None]  # the token of each row
    v = tl.load(p_row + o_d[None, :], mask=m, other=0.0)
    vp = tl.load(p_row + o_p[None, :], mask=m_rot, other=0.0).to(tl.float32)
    c = tl.load(cos + o_cs * cos_stride + o_d[None, :], mask=m_rot, other=0.0).to(tl.float32)
    if TRANSPOSE:
        # Per pair (j, j+h) the forward is [y_j, y_{j+h}] = [[c_j, -s_j], [s_{j+h}, c_{j+h}]] [x_j, x_{j+h}];
        # its transpose gives dx_j = c_j g_j + s_{j+h} g_{j+h} and dx_{j+h} = c_{j+h} g_{j+h} - s_j g_j:
        # sin at the partner's index, the sign flipped.
        s = tl.load(sin + o_cs * sin_stride + o_p[None, :], mask=m_rot, other=0.0).to(tl.float32)
        sign = tl.where(first, 1.0, -1.0)
    else:
        s = tl.load(sin + o_cs * sin_stride + o_d[None, :], mask=m_rot, other=0.0).to(tl.float32)
        sign = tl.where(first, -1.0, 1.0)
    y = v.to(tl.float32) * c + sign[None, :] * (vp * s)
    # the pass-through dims are stored as loaded (a copy, exact), not as x * 1 + 0
    tl.store(out + o_n.to(tl.int64)[:, None] * D + o_d[None, :],
             tl.where((o_d < R)[None, :], y.to(out.dtype.element_ty), v), mask=m)  # fmt: skip


if triton is not None:
    _rotary_kernel = triton.jit(_rotary_kernel)


def _launch(x: torch.Tensor, cos_NR: torch.Tensor, sin_NR: torch.Tensor, transpose: bool) -> torch.Tensor:
    """x [B, T, H, D] rotated (or, transpose, its gradient taken back), a new contiguous tensor of x's dtype.

    Grid: one program per BN consecutive (token, head) rows, each row whole (BD = D rounded up to a power of
    2): a program reads and writes one contiguous block of memory, and T*H/BN programs (4,096 for 8,192
    tokens of 8 heads of 256, BN = 16) fill an H100 many times over at any T. cos/sin rows are read once per
    head from cache; the partner loads re-read the tile's own rotary columns.
    """
    B, T, H, D = x.shape
    # The kernel addresses x as rows of D at flat offsets. q and k come contiguous from q_norm/k_norm (and
    # the gradients from SDPA/flash-attention's backward), so this copies nothing in the training step.
    x = x.contiguous()
    out = torch.empty_like(x)
    BD = triton.next_power_of_2(D)
    BN = max(1, _TILE // BD)
    rows = B * T * H
    if rows:  # an empty grid is no launch
        _rotary_kernel[(triton.cdiv(rows, BN),)](
            x, cos_NR, sin_NR, out, rows, H, cos_NR.stride(0), sin_NR.stride(0),
            D=D, R=cos_NR.shape[1], BN=BN, BD=BD, TRANSPOSE=transpose, num_warps=4,
        )  # fmt: skip
    return out


class _Rotary(torch.autograd.Function):
    """(q, k) -> (q_embed, k_embed); cos and sin are constants (no gradient)."""

    @staticmethod
    def forward(ctx, q, k, cos_NR, sin_NR):
        ctx.save_for_backward(cos_NR, sin_NR)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no kernel for it
        return _launch(q, cos_NR, sin_NR, False), _launch(k, cos_NR, sin_NR, False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos_NR, sin_NR = ctx.saved_tensors
        dq = None if dq is None or not ctx.needs_input_grad[0] else _launch(dq, cos_NR, sin_NR, True)
        dk = None if dk is None or not ctx.needs_input_grad[1] else _launch(dk, cos_NR, sin_NR, True)
        return dq, dk, None, None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """cos or sin [B, T, R] as [B*T, R] with unit column stride: a view where possible (sequence parallelism
    passes column halves of one [1, T, 2R] tensor: the row stride covers that without a copy)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _rotary_triton(q, k, cos, sin):
    """The kernel path of `apply_rotary`, with no checks: tests call it directly (on CPU under TRITON_INTERPRET=1)."""
    return _Rotary.apply(q, k, _rows(cos), _rows(sin))


def _kernel_fits(q, k, cos, sin) -> bool:
    if triton is None or q.device.type != "cuda" or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3:
        return False
    B, T, _, D = q.shape
    R = cos.shape[-1]
    return (
        q.dtype in _DTYPES and k.dtype == q.dtype and cos.dtype == sin.dtype in (q.dtype, _promoted_under_autocast(q))
        and all(t.device == q.device for t in (k, cos, sin))
        and not (cos.requires_grad or sin.requires_grad)
        and k.shape[:2] == (B, T) and k.shape[3] == D and cos.shape == sin.shape == (B, T, R)
        and R % 2 == 0 and 0 < R <= D
    )  # fmt: skip


def _promoted_under_autocast(q: torch.Tensor) -> torch.dtype | None:
    """fp32 where autocast runs in q's dtype: then upstream promotes q to fp32 for the rotation and the caller
    casts it back to q's dtype (padfree.models.layers.attention_heads), which the kernel's output already is."""
    if q.dtype != torch.float32 and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == q.dtype:
        return torch.float32
    return None


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, upstream):
    """(q_embed, k_embed) = upstream(q, k, cos, sin, unsqueeze_dim=2), by the Triton kernels where they apply.

    q [B, T, H, D], k [B, T, HKV, D], cos and sin [B, T, R] with R <= D. `upstream` is the model family's
    `apply_rotary_pos_emb` (all three families share its formula, which the kernels implement), called for
    everything the kernels do not cover. Under autocast in q's dtype with fp32 cos/sin the result is in q's
    dtype, not upstream's fp32: what the attention layer casts it to next (module docstring).
    """
    if _kernel_fits(q, k, cos, sin):
        return _rotary_triton(q, k, cos, sin)
    return upstream(q, k, cos, sin, unsqueeze_dim=2)
