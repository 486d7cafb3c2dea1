"""The inter-chunk state recurrence of the chunked gated delta rule, two ways.

Per chunk j the state at the chunk's start, S_j [K, V], must be known before outputs can be formed.
With the chunk's WY quantities (U_j, W_j, Kd_j and its total decay d_j, see torch_backend.py):

    v_new_j = U_j - W_j S_j                    (the part of the values S_j does not yet predict)
    S_{j+1} = d_j S_j + Kd_j^T v_new_j  =  A_j S_j + B_j,   A_j = d_j I - Kd_j^T W_j,  B_j = Kd_j^T U_j

A document's first chunk starts from its initial state (or zeros) instead: that is a reset.

- `loop`: the recurrence step by step, two small matmuls per chunk. Fewest FLOPs; best on CPU,
  where each step is large enough to hide Python's overhead.
- `scan`: a log-depth associative scan over the affine maps (A_j, B_j); (A2, B2) after (A1, B1)
  is (A2 A1, A2 B1 + B2). About 3x the FLOPs of the loop, but 2 log2(J) batched steps instead of
  J tiny ones: the GPU choice, where the loop would be bound by kernel launches, and it compiles
  without unrolling hundreds of steps.

Legend: J chunks per row, M = R * HV independent (row, value head) pairs, L chunk length,
K key dim, V value dim, n the number of resets (documents starting in a row).
"""

from __future__ import annotations

import torch

STATE_SCANS = ("auto", "loop", "scan")


def states_by_loop(
    u_JMLV: torch.Tensor,
    w_JMLK: torch.Tensor,
    kd_JMLK: torch.Tensor,
    decay_JM: torch.Tensor,
    h0_nMKV: torch.Tensor | None,
    reset_js: list[int],
    carry_js: list[int],
    carry_nMKV: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step through the chunks. Returns (S at each chunk's start [J, M, K, V], v_new [J, M, L, V]).

    reset_js: chunks whose state restarts at h0_nMKV[i] (zeros when None): a document starts at
    their first slot. carry_js: chunks whose carried state gets carry_nMKV[i] added (the decayed
    initial state of a document that starts mid-chunk). Host ints: Python branches, fixed per layout.
    """
    J, M, _, V = u_JMLV.shape
    K = w_JMLK.shape[-1]
    reset_of = {j: i for i, j in enumerate(reset_js)}
    carry_of = {j: i for i, j in enumerate(carry_js)}
    zero_MKV = u_JMLV.new_zeros(M, K, V)
    s_MKV = zero_MKV
    starts, v_news = [], []
    # unbind, not [j]: the backward of J selects would add J full-size zero tensors (O(J^2) work);
    # unbind's backward is one stack.
    u_MLV, w_MLK, kd_MKL = u_JMLV.unbind(0), w_JMLK.unbind(0), kd_JMLK.transpose(-1, -2).unbind(0)
    decay_M11 = decay_JM[:, :, None, None].unbind(0)
    h0_MKV = None if h0_nMKV is None else h0_nMKV.unbind(0)
    carry_MKV = None if carry_nMKV is None else carry_nMKV.unbind(0)
    for j in range(J):
        if j in reset_of:
            s_MKV = zero_MKV if h0_MKV is None else h0_MKV[reset_of[j]]
        starts.append(s_MKV)
        v_new_MLV = torch.baddbmm(u_MLV[j], w_MLK[j], s_MKV, alpha=-1.0)
        v_news.append(v_new_MLV)
        s_MKV = torch.baddbmm(s_MKV * decay_M11[j], kd_MKL[j], v_new_MLV)
        if j in carry_of:
            s_MKV = s_MKV + carry_MKV[carry_of[j]]
    return torch.stack(starts), torch.stack(v_news)


def _affine_prefix(a_JMKK: torch.Tensor, b_JMKV: torch.Tensor) -> torch.Tensor:
    """S_j = A_j S_{j-1} + B_j for all j, with S_0 = B_0 (A_0 is ignored), by recursive doubling.

    Pairs (2i, 2i+1) are composed into one map, the half-length problem is solved recursively
    (giving S at odd j), then each even j >= 2 takes one step from its odd predecessor.
    """
    J = a_JMKK.shape[0]
    if J == 1:
        return b_JMKV
    m = J // 2
    a_even, a_odd = a_JMKK[0 : 2 * m : 2], a_JMKK[1 : 2 * m : 2]
    b_even, b_odd = b_JMKV[0 : 2 * m : 2], b_JMKV[1 : 2 * m : 2]
    # The composed A of the first pair is never read (its B already is a state), nor is any A at
    # the last level: skip those K x K x K products.
    a_pair = a_odd @ a_even if m > 1 else a_odd
    s_odd = _affine_prefix(a_pair, b_odd + a_odd @ b_even)
    s_even = torch.cat([b_JMKV[:1], b_JMKV[2::2] + a_JMKK[2::2] @ s_odd[: (J - 1) // 2]])
    s_JMKV = torch.stack([s_even[:m], s_odd], dim=1).flatten(0, 1)
    if J % 2:
        s_JMKV = torch.cat([s_JMKV, s_even[m:]])
    return s_JMKV


def states_by_scan(
    u_JMLV: torch.Tensor,
    w_JMLK: torch.Tensor,
    kd_JMLK: torch.Tensor,
    decay_JM: torch.Tensor,
    h0_nMKV: torch.Tensor | None,
    reset_js: list[int],
    carry_js: list[int],
    carry_nMKV: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `states_by_loop`, by an associative scan over the chunks' affine maps."""
    K = w_JMLK.shape[-1]
    kd_t = kd_JMLK.transpose(-1, -2)
    eye_KK = torch.eye(K, dtype=u_JMLV.dtype, device=u_JMLV.device)
    a_JMKK = decay_JM[..., None, None] * eye_KK - kd_t @ w_JMLK
    b_JMKV = kd_t @ u_JMLV
    resets = torch.tensor(reset_js, dtype=torch.long, device=u_JMLV.device)
    # A reset chunk forgets what came before (A = 0) and starts from its document's initial state,
    # which it maps like any other state: B += A h0.
    if h0_nMKV is not None:
        b_JMKV = b_JMKV.index_add(0, resets, a_JMKK.index_select(0, resets) @ h0_nMKV)
    a_JMKK = a_JMKK.index_fill(0, resets, 0.0)
    if carry_js:
        b_JMKV = b_JMKV.index_add(0, torch.tensor(carry_js, device=u_JMLV.device), carry_nMKV)
    after_JMKV = _affine_prefix(a_JMKK, b_JMKV)  # the state after each chunk
    starts = torch.cat([torch.zeros_like(after_JMKV[:1]), after_JMKV[:-1]])
    starts = starts.index_fill(0, resets, 0.0) if h0_nMKV is None else starts.index_copy(0, resets, h0_nMKV)
    return starts, u_JMLV - w_JMLK @ starts
