"""The oracle: the gated delta rule one token at a time, in fp32, one document at a time.

Slow on purpose. It is the definition the fast backends are tested against, so it follows the
recurrence literally and shares no code with them. Same argument names as the public op.

Legend: B batch, T tokens, N documents, H query/key heads, HV value heads (a multiple of H),
K key dim, V value dim.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens_host: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token recurrence; inputs already validated by the public function.

    q, k: [B, T, H, K]; v: [B, T, HV, V]; g, beta: [B, T, HV]; initial_state: [N, HV, K, V].
    cu_seqlens_host: the document offsets as Python ints (B must then be 1), or None for B
    independent sequences. Returns (o [B, T, HV, V] in q's dtype, final state [N, HV, K, V] fp32).
    For each document, with S [HV, K, V] starting at its initial state (or zeros), per token t:
        S = exp(g_t) S;  S = S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T (scale q_t).
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    group = HV // H  # value head hv reads query/key head hv // group
    out_dtype = q.dtype
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    q = q * scale
    # Documents as (row, start, end); without cu_seqlens each batch row is one document.
    if cu_seqlens_host is None:
        docs = [(b, 0, T) for b in range(B)]
    else:
        docs = [(0, s, e) for s, e in zip(cu_seqlens_host[:-1], cu_seqlens_host[1:])]

    head_of = torch.arange(HV, device=q.device) // group
    out_rows: list[list[torch.Tensor]] = [[] for _ in range(B)]
    finals = []
    for n, (b, start, end) in enumerate(docs):
        if initial_state is None:
            S = q.new_zeros(HV, K, V)
        else:
            S = initial_state[n].float()
        for t in range(start, end):
            q_t, k_t = q[b, t, head_of], k[b, t, head_of]  # [HV, K]
            S = S * g[b, t].exp()[:, None, None]
            # Broadcast-multiply-sum rather than matmul: tiny elementwise ops stay single-threaded.
            err = v[b, t] - (S * k_t[:, :, None]).sum(1)  # the value S predicts for k_t, corrected
            S = S + k_t[:, :, None] * (beta[b, t][:, None] * err)[:, None, :]
            out_rows[b].append((S * q_t[:, :, None]).sum(1))
        finals.append(S)
    o = torch.stack([torch.stack(row) for row in out_rows])  # [B, T, HV, V]
    final_state = torch.stack(finals) if output_final_state else None
    return o.to(out_dtype), final_state
