"""Reference varlen causal depthwise conv1d: one `F.conv1d` per document, in fp32 (the test oracle).

Legend: B batch, T tokens per row, D channels, W kernel width, N documents (sequences).

Slow on purpose (a Python loop over documents and a host copy of `cu_seqlens`), but obviously
right: each document is cut out, given its own left context (`initial_state` or zeros) and
convolved on its own, so nothing can leak between documents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same arguments and meaning as `padfree.ops.conv1d.causal_conv1d`; returns (y, final_state).

    x: [B, T, D], weight: [D, W], bias: [D], initial_state: [N, D, W], cu_seqlens: [N + 1].
    Computes in fp32 (fp64 if any input is fp64); y [B, T, D] and final_state [N, D, W] in x's dtype.
    """
    B, T, D = x.shape
    W = weight.shape[1]
    acc = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
    w_D1W = weight.to(acc).unsqueeze(1)
    b_D = bias.to(acc) if bias is not None else None
    if cu_seqlens is None:
        docs = [(b, 0, T) for b in range(B)]
    else:
        offsets = [int(o) for o in cu_seqlens.tolist()]
        docs = [(0, start, end) for start, end in zip(offsets, offsets[1:])]

    y_BTD = torch.zeros(B, T, D, dtype=acc, device=x.device)
    finals = []
    for n, (b, start, end) in enumerate(docs):
        x_DL = x[b, start:end].to(acc).t()
        if initial_state is not None:
            h_DW = initial_state[n].to(acc)
        else:
            h_DW = torch.zeros(D, W, dtype=acc, device=x.device)
        # The conv sees the last W-1 columns of the state as the tokens before the document.
        padded_DL = torch.cat([h_DW[:, 1:], x_DL], dim=1)
        out_DL = F.conv1d(padded_DL.unsqueeze(0), w_D1W, b_D, groups=D)[0]
        if activation in ("silu", "swish"):
            out_DL = F.silu(out_DL)
        y_BTD[b, start:end] = out_DL.t()
        finals.append(torch.cat([h_DW, x_DL], dim=1)[:, -W:])
    final_NDW = torch.stack(finals).to(x.dtype) if output_final_state else None
    return y_BTD.to(x.dtype), final_NDW
