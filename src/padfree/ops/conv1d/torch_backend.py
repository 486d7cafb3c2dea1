"""Varlen causal depthwise conv1d in plain PyTorch: one pass over the row, no loop over documents.

Legend: B batch, T tokens per row, L = B*T tokens of the flattened batch, D channels, W kernel
width, P = W - 1 taps that reach back, N documents (sequences).

How documents are kept apart. The conv over the whole flattened row is W shifted multiply-adds of
x padded with P zero rows in front ([L, D] layout: on CPU that beats `F.conv1d`, which needs [D, L]
copies; every op acts on whole tensors, no `out=` or slice writes, which keeps inductor happy).
Only the first P rows of each document can reach back past its start, so those N*P rows are
recomputed from in-document taps (plus `initial_state`) and *written over* the row result.
Overwriting rather than subtracting the leak keeps them exact: nothing of another document, not
even an inf, survives. Backward mirrors it: dx is the anticausal shifted sum with each document's
last P rows rewritten, and dw sums dy*x over rows at least P into their document, plus the head
rows done exactly.

Edge rows that do not exist (a document shorter than P) go to a spare row L of an [L + 1, D]
buffer, so every index write hits a distinct row. A batch without `cu_seqlens` is the same problem
with one document per batch row. The fix-up costs O(N * P * W * D): packed costs what unpacked does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _edge_rows(cu_N1: torch.Tensor, P: int, L: int, tail: bool):
    """Rows [N, P] of the first (tail: last) P tokens of each document, L where a document is shorter.

    Also returns which rows exist, and the documents' starts and ends as [N, 1].
    """
    start_N1, end_N1 = cu_N1[:-1, None], cu_N1[1:, None]
    p_P = torch.arange(P, device=cu_N1.device)
    exists_NP = p_P < end_N1 - start_N1
    rows_NP = end_N1 - 1 - p_P if tail else start_N1 + p_P
    return torch.where(exists_NP, rows_NP, L), exists_NP, start_N1, end_N1


def _head_window(x_LD, h_NWD, rows_NP, start_N1, shift: int):
    """x[row - shift] for the head rows, taken from the initial state (or 0) before the document start."""
    src_NP = rows_NP - shift
    inside_NP = src_NP >= start_N1
    x_NPD = x_LD[src_NP.clamp(0, x_LD.shape[0] - 1)]
    if h_NWD is None:
        before_NPD = x_NPD.new_zeros(())
    else:
        # token start - k (k = 1..P) sits in column W - k of the state
        col_NP = (h_NWD.shape[1] + src_NP - start_N1).clamp(0, h_NWD.shape[1] - 1)
        before_NPD = h_NWD[torch.arange(h_NWD.shape[0], device=x_LD.device)[:, None], col_NP]
    return torch.where(inside_NP[..., None], x_NPD, before_NPD), inside_NP


class _CausalConv1dFunction(torch.autograd.Function):
    """y = causal depthwise conv of x restarted at each document (no bias, no activation), in w's dtype."""

    @staticmethod
    def forward(ctx, x_LD, w_DW, h_NWD, cu_N1):
        L, D = x_LD.shape
        W = w_DW.shape[1]
        P = W - 1
        # P zero rows in front, one spare row behind: y has L + 1 rows, the last one the spare row
        xpad = F.pad(x_LD.to(w_DW.dtype), (0, 0, P, 1))
        y_buf = xpad[P : P + L + 1] * w_DW[:, P]
        for j in range(P):
            y_buf.addcmul_(xpad[j : j + L + 1], w_DW[:, j])
        rows_NP, _, start_N1, _ = _edge_rows(cu_N1, P, L, tail=False)
        head_NPD = torch.zeros(*rows_NP.shape, D, dtype=w_DW.dtype, device=x_LD.device)
        for j in range(W):
            x_NPD, _ = _head_window(x_LD, h_NWD, rows_NP, start_N1, P - j)
            head_NPD.addcmul_(x_NPD, w_DW[:, j])
        y_buf[rows_NP] = head_NPD
        ctx.save_for_backward(x_LD, w_DW, h_NWD, cu_N1)
        return y_buf[:L]

    @staticmethod
    def backward(ctx, dy_LD):
        x_LD, w_DW, h_NWD, cu_N1 = ctx.saved_tensors
        L, D = x_LD.shape
        W = w_DW.shape[1]
        P = W - 1
        dy_LD = dy_LD.to(w_DW.dtype)
        dx = dw = dh = None
        if ctx.needs_input_grad[0]:
            # dx[u] = sum_s w[:, P - s] * dy[u + s]; only a document's last P rows reach past its end.
            dypad = F.pad(dy_LD, (0, 0, 0, P + 1))
            dx_buf = dypad[: L + 1] * w_DW[:, P]
            for s in range(1, W):
                dx_buf.addcmul_(dypad[s : s + L + 1], w_DW[:, P - s])
            rows_NP, _, _, end_N1 = _edge_rows(cu_N1, P, L, tail=True)
            tail_NPD = torch.zeros(*rows_NP.shape, D, dtype=w_DW.dtype, device=x_LD.device)
            for j in range(W):
                dst_NP = rows_NP + (P - j)
                dy_NPD = torch.where((dst_NP < end_N1)[..., None], dy_LD[dst_NP.clamp(max=L - 1)], 0)
                tail_NPD.addcmul_(dy_NPD, w_DW[:, j])
            dx_buf[rows_NP] = tail_NPD
            dx = dx_buf[:L].to(x_LD.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            rows_NP, exists_NP, start_N1, _ = _edge_rows(cu_N1, P, L, tail=False)
            dy_head_NPD = torch.where(exists_NP[..., None], dy_LD[rows_NP.clamp(max=L - 1)], 0)
        if ctx.needs_input_grad[1]:
            # Body rows (>= P into their document) never reach back past the start: zero the head
            # rows of dy, take the plain shifted dot products, then add the head rows exactly.
            dy_body_buf = F.pad(dy_LD, (0, 0, 0, 1))
            dy_body_buf[rows_NP] = 0
            # every tap reduces over all L rows of the padded x (x[t - s] is 0 for t < s): equal-length
            # reductions, which torch 2.11's inductor needs (it asserts on mixed lengths when fusing)
            xpad = F.pad(x_LD.to(w_DW.dtype), (0, 0, P, 0))
            dw_cols = []
            for j in range(W):
                body_D = (dy_body_buf[:L] * xpad[j : j + L]).sum(0)
                x_NPD, _ = _head_window(x_LD, h_NWD, rows_NP, start_N1, P - j)
                dw_cols.append(body_D + (dy_head_NPD * x_NPD).sum((0, 1)))
            dw = torch.stack(dw_cols, dim=1)
        if ctx.needs_input_grad[2]:
            # Head row p reads state column p + j + 1 through tap j, when that is before the start.
            dh_NWD = torch.zeros_like(h_NWD)
            col_P = torch.arange(P, device=x_LD.device) + 1
            for j in range(W):
                reads_state_NP = exists_NP & (rows_NP - (P - j) < start_N1)
                col_NP = (col_P + j).clamp(max=W - 1).expand_as(rows_NP)
                contrib_NPD = torch.where(reads_state_NP[..., None], dy_head_NPD * w_DW[:, j], 0)
                dh_NWD.scatter_add_(1, col_NP[..., None].expand_as(contrib_NPD), contrib_NPD)
            dh = dh_NWD
        return dx, dw, dh, None


def _final_state(x_LD, h_NWD, cu_N1, W: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, D, W]: the last W inputs of each document, reaching into the initial state (or 0) if shorter."""
    start_N1, end_N1 = cu_N1[:-1, None], cu_N1[1:, None]
    src_NW = end_N1 - W + torch.arange(W, device=x_LD.device)
    x_NWD = x_LD[src_NW.clamp(min=0)]
    if h_NWD is None:
        before_NWD = x_NWD.new_zeros(())
    else:
        col_NW = (src_NW - start_N1 + W).clamp(0, W - 1)
        before_NWD = h_NWD[torch.arange(h_NWD.shape[0], device=x_LD.device)[:, None], col_NW]
    final_NWD = torch.where((src_NW >= start_N1)[..., None], x_NWD, before_NWD)
    return final_NWD.to(dtype).transpose(1, 2).contiguous()


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Vectorised backend of `padfree.ops.conv1d.causal_conv1d` (inputs already validated).

    Accumulates in fp32 (fp64 if any input is fp64), like FLA's kernel; returns y [B, T, D] in x's
    dtype and, if asked, final_state [N, D, W] in x's dtype.
    """
    B, T, D = x.shape
    W = weight.shape[1]
    L = B * T
    acc = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
    if cu_seqlens is None:  # one document per batch row
        cu_N1 = torch.arange(0, L + 1, T, device=x.device)
    else:
        cu_N1 = cu_seqlens.to(torch.long)
    x_LD = x.reshape(L, D)
    h_NWD = initial_state.transpose(1, 2).to(acc) if initial_state is not None else None
    y_LD = _CausalConv1dFunction.apply(x_LD, weight.to(acc), h_NWD, cu_N1)
    if bias is not None:
        y_LD = y_LD + bias.to(acc)
    if activation in ("silu", "swish"):
        y_LD = F.silu(y_LD)
    final_NDW = _final_state(x_LD, h_NWD, cu_N1, W, x.dtype) if output_final_state else None
    return y_LD.to(x.dtype).view(B, T, D), final_NDW
