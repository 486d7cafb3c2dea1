"""The inter-chunk state recurrence of the chunked gated delta rule, two ways.

Per chunk j the state at the chunk's start, S_j [K, V], must be known before outputs can be formed.
With the chunk's WY quantities (U_j, W_j, Kd_j and its total decay d_j, see torch_backend.py):

    v_new_j = U_j - W_j S_j                    (the part of the values S_j does not yet predict)
    S_{j+1} = d_j S_j + Kd_j^T v_new_j  =  A_j S_j + B_j,   A_j = d_j I - Kd_j^T W_j,  B_j = Kd_j^T U_j

A document's first chunk starts from its initial state (or zeros) instead: that is a reset. The
caller folds resets into the previous chunk's maps (d and Kd scaled by 0), and hands what must be
added to a chunk's starting state (initial states) as `inject`, so these functions see one
uniform recurrence, and without initial states nothing in them depends on where documents fall:
a compiled graph is reused across document layouts.

- `loop`: the recurrence step by step, two small matmuls per chunk. Fewest FLOPs; best on CPU,
  where each step is large enough to hide Python's overhead.
- `scan`: a log-depth associative scan over the affine maps (A_j, B_j); (A2, B2) after (A1, B1)
  is (A2 A1, A2 B1 + B2). About 3x the FLOPs of the loop, but 2 log2(J) batched steps instead of
  J tiny ones: the GPU choice, where the loop would be bound by kernel launches, and it compiles
  without unrolling hundreds of steps.

Legend: J chunks per row, M = R * HV independent (row, value head) pairs, L chunk length,
K key dim, V value dim, n the number of injected states.
"""

from __future__ import annotations

import torch

STATE_SCANS = ("auto", "loop", "scan")


def states_by_loop(
    u_JMLV: torch.Tensor,
    w_JMLK: torch.Tensor,
    kd_JMLK: torch.Tensor,
    decay_JM: torch.Tensor,
    inject_js: list[int],
    inject_nMKV: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step through the chunks. Returns (S at each chunk's start [J, M, K, V], v_new [J, M, L, V]).

    S_0 = 0; S_{j+1} = decay_j S_j + Kd_j^T (U_j - W_j S_j); then inject_nMKV[i] is added to the
    state starting chunk inject_js[i] (host ints, so Python branches: fixed per layout).
    """
    J, M, _, V = u_JMLV.shape
    K = w_JMLK.shape[-1]
    inject_of = {j: i for i, j in enumerate(inject_js)}
    s_MKV = u_JMLV.new_zeros(M, K, V)
    starts, v_news = [], []
    # unbind, not [j]: the backward of J selects would add J full-size zero tensors (O(J^2) work);
    # unbind's backward is one stack.
    u_MLV, w_MLK, kd_MKL = u_JMLV.unbind(0), w_JMLK.unbind(0), kd_JMLK.transpose(-1, -2).unbind(0)
    decay_M11 = decay_JM[:, :, None, None].unbind(0)
    inject_MKV = None if inject_nMKV is None else inject_nMKV.unbind(0)
    for j in range(J):
        if j in inject_of:
            s_MKV = s_MKV + inject_MKV[inject_of[j]]
        starts.append(s_MKV)
        v_new_MLV = torch.baddbmm(u_MLV[j], w_MLK[j], s_MKV, alpha=-1.0)
        v_news.append(v_new_MLV)
        if j + 1 < J:
            s_MKV = torch.baddbmm(s_MKV * decay_M11[j], kd_MKL[j], v_new_MLV)
    return torch.stack(starts), torch.stack(v_news)


def _affine_prefix(a_JMKK: torch.Tensor, b_JMKV: torch.Tensor) -> torch.Tensor:
    """S_j = A_j S_{j-1} + B_j for all j, with S_0 = B_0 (A_0 must be 0), by recursive doubling.

    Pairs (2i, 2i+1) are composed into one map, the half-length problem is solved recursively
    (giving S at odd j), then each even j takes one step from its odd predecessor. A_0 = 0 makes
    that step right for j = 0 too (from any state), and stays true of the composed pairs.
    Splits are views and unbinds, not strided slices: their backward is one stack or cat, where a
    slice's backward would zero-fill a full-size buffer.
    """
    J = a_JMKK.shape[0]
    if J == 1:
        return b_JMKV
    m = J // 2
    a_even, a_odd = a_JMKK[: 2 * m].unflatten(0, (m, 2)).unbind(1)
    b_even, b_odd = b_JMKV[: 2 * m].unflatten(0, (m, 2)).unbind(1)
    # The last level needs no composed A (its only pair's A is 0 and never read).
    a_pair = a_odd @ a_even if m > 1 else a_odd
    s_odd = _affine_prefix(a_pair, b_odd + a_odd @ b_even)  # S at 1, 3, ..., 2m - 1
    s_before_even = s_odd.roll(1, 0)  # S at 2i - 1; wraps around for i = 0, where A_0 = 0
    s_even = b_even + a_even @ s_before_even
    s_JMKV = torch.stack([s_even, s_odd], dim=1).flatten(0, 1)
    if J % 2:  # the last, unpaired element
        s_JMKV = torch.cat([s_JMKV, b_JMKV[-1:] + a_JMKK[-1:] @ s_odd[-1:]])
    return s_JMKV


def states_by_scan(
    u_JMLV: torch.Tensor,
    w_JMLK: torch.Tensor,
    kd_JMLK: torch.Tensor,
    decay_JM: torch.Tensor,
    inject_js: list[int],
    inject_nMKV: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `states_by_loop`, by an associative scan over the chunks' affine maps:
    element 0 maps anything to S_0, element j >= 1 is chunk j - 1's map (A, B)."""
    K = w_JMLK.shape[-1]
    kd_t = kd_JMLK[:-1].transpose(-1, -2)  # the last chunk's map is never needed
    eye_KK = torch.eye(K, dtype=u_JMLV.dtype, device=u_JMLV.device)
    a_JMKK = decay_JM[:-1, :, None, None] * eye_KK - kd_t @ w_JMLK[:-1]
    b_JMKV = kd_t @ u_JMLV[:-1]
    a_JMKK = torch.cat([a_JMKK.new_zeros(1, *a_JMKK.shape[1:]), a_JMKK])
    b_JMKV = torch.cat([b_JMKV.new_zeros(1, *b_JMKV.shape[1:]), b_JMKV])
    if inject_js:
        b_JMKV = b_JMKV.index_add(0, torch.tensor(inject_js, device=u_JMLV.device), inject_nMKV)
    starts = _affine_prefix(a_JMKK, b_JMKV)
    return starts, u_JMLV - w_JMLK @ starts
