"""Chunked gated delta rule in plain PyTorch, for packed rows: one pass, no loop over documents.

1. The row is cut into chunks of L = 64 tokens in row order (layout.py); a chunk may hold several
   documents (segments). Per-slot masks keep them apart, so nothing is gathered or padded between
   documents.
2. Intra-chunk work for all chunks at once (batched matmuls, one triangular solve): the WY form of
   the chunk's delta-rule steps. With G the log decay summed from the start of the slot's segment,
     decay[i, j] = exp(G_i - G_j) for j <= i in the same document, else 0
     T = (I + strict_tril(beta_i k_i.k_j decay[i, j]))^-1,  U = T (beta v),  W = T (beta e^G k).
3. The state at each chunk's start (scan.py): S_{j+1} = d_j S_j + Kd_j^T (U_j - W_j S_j), where
   W acts on first-segment rows, Kd = k e^{G_last - G} on last-segment rows, d_j = e^{G_last} when
   one document spans the chunk (else the carried state is replaced, not decayed).
4. o = (q k^T * decay) v_new + (e^G q) S_start, all chunks at once; final states per document.
Documents starting mid-chunk see their own initial state: rank-L corrections made before step 3.

Grouped value heads: q/k are kept per key head [.., H, 1, L, K] and broadcast over the G value heads
of the group, so q.k and k.k are computed once per key head and q/k are never repeated.

Legend: B batch, T tokens, N documents, H key heads, G = HV / H value heads per key head,
HV value heads, K key dim, V value dim, J chunks per row, R rows (B, or 1 for a packed row),
L = 64 chunk length, M = R * HV, n a subset of documents.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from padfree.ops.gated_delta import layout
from padfree.ops.gated_delta.scan import STATE_SCANS, states_by_loop, states_by_scan

CHUNK = layout.CHUNK


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _chunks(x: torch.Tensor, J: int) -> torch.Tensor:
    """[R, T, ...] -> [J, R, L, ...], zero-padding the tail."""
    pad = J * CHUNK - x.shape[1]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    return x.reshape(x.shape[0], J, CHUNK, *x.shape[2:]).transpose(0, 1)


def _exp_masked(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """exp(x) where `keep`, else 0; masked before exp, where x may be large and positive."""
    return x.exp() if keep is None else x.masked_fill(~keep, -torch.inf).exp()


@torch.compiler.disable(recursive=False)
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
    state_scan: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs already validated by the public function; shapes as there, offsets as host ints.

    state_scan: "loop" (sequential over chunks), "scan" (log-depth associative scan) or "auto":
    loop on CPU, scan elsewhere (scan.py says why). Computes in fp32; o comes back in q's dtype,
    the final state [N, HV, K, V] in fp32.

    Under torch.compile this host-side wrapper is skipped and `_chunked` is compiled on its own:
    guarded on tensor shapes and the layout's masks, not on the offsets, so (without initial or
    final states) new document layouts of the same row length reuse one graph.
    """
    if state_scan not in STATE_SCANS:
        raise ValueError(f"state_scan={state_scan!r} is not one of {STATE_SCANS}.")
    if state_scan == "auto":
        state_scan = "loop" if q.device.type == "cpu" else "scan"
    B, T = q.shape[:2]
    if cu_seqlens_host is None:
        seg = layout.unpacked(B, T, q.device)
    else:
        seg = layout.packed(tuple(cu_seqlens_host), q.device)
    return _chunked(
        q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, seg, state_scan
    )


def _chunked(
    q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, seg, state_scan
) -> tuple[torch.Tensor, torch.Tensor | None]:
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G, L = HV // H, CHUNK
    out_dtype = q.dtype
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    q = q * scale
    h0 = None if initial_state is None else initial_state.float()

    J, R, M = seg.J, seg.R, seg.R * HV
    q_JRH1LK = _chunks(q, J).permute(0, 1, 3, 2, 4).unsqueeze(3)
    k_JRH1LK = _chunks(k, J).permute(0, 1, 3, 2, 4).unsqueeze(3)
    v_JRHGLV = _chunks(v, J).reshape(J, R, L, H, G, V).permute(0, 1, 3, 4, 2, 5)
    g_JRHGL = _chunks(g, J).reshape(J, R, L, H, G).permute(0, 1, 3, 4, 2)
    beta_JRHGL = _chunks(beta, J).reshape(J, R, L, H, G).permute(0, 1, 3, 4, 2)

    # Log decay summed from each slot's segment start (the exclusive cumsum at the segment start
    # subtracted), and the masks in the [J, 1, 1, 1, L(, L)] shape that broadcasts over R, H, G.
    gseg_JRHGL = g_JRHGL.cumsum(-1)
    causal_LL = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    same_J111LL = first_J111L = last_J111L = None
    if seg.same_JLL is not None:
        excl = gseg_JRHGL - g_JRHGL
        gseg_JRHGL = gseg_JRHGL - excl.gather(-1, seg.seg_start_JL[:, None, None, None].expand_as(excl))
        same_J111LL = (seg.same_JLL & causal_LL)[:, None, None, None]
        first_J111L, last_J111L = seg.first_JL[:, None, None, None], seg.last_JL[:, None, None, None]
    keep = causal_LL if same_J111LL is None else same_J111LL
    decay_JRHGLL = _exp_masked(gseg_JRHGL[..., :, None] - gseg_JRHGL[..., None, :], keep)
    gexp_JRHGL = gseg_JRHGL.exp()
    glast_JRHG1 = gseg_JRHGL[..., -1:]

    # The WY system. solve_triangular(unitriangular=True) reads only the strict lower triangle.
    kk_JRH1LL = k_JRH1LK @ k_JRH1LK.transpose(-1, -2)
    a_JRHGLL = beta_JRHGL[..., None] * kk_JRH1LL * decay_JRHGLL
    # Rows of later segments read their document's own initial state, not the carried one: without
    # initial states they read nothing, so the first-segment mask goes straight into W's and Qd's
    # factors; with them, W and Qd stay whole until the initial-state corrections are taken.
    wfac_JRHGL = beta_JRHGL * gexp_JRHGL
    qfac_JRHGL = gexp_JRHGL
    if first_J111L is not None and h0 is None:
        wfac_JRHGL, qfac_JRHGL = wfac_JRHGL * first_J111L, qfac_JRHGL * first_J111L
    rhs = torch.cat([beta_JRHGL[..., None] * v_JRHGLV, wfac_JRHGL[..., None] * k_JRH1LK], dim=-1)
    uw = torch.linalg.solve_triangular(a_JRHGLL, rhs, upper=False, unitriangular=True)
    u_JRHGLV, w_JRHGLK = uw[..., :V], uw[..., V:]
    qd_JRHGLK = qfac_JRHGL[..., None] * q_JRH1LK
    # What chunk j writes into chunk j + 1's state: nothing when a document starts there (a reset).
    # Folding resets in here, as data, keeps the state recurrence independent of the layout.
    cont_J1111 = torch.cat([~seg.reset_J[1:], seg.reset_J.new_ones(1)]).to(q.dtype)[:, None, None, None, None]
    kdfac_JRHGL = _exp_masked(glast_JRHG1 - gseg_JRHGL, last_J111L) * cont_J1111
    kd_JRHGLK = kdfac_JRHGL[..., None] * k_JRH1LK
    carry_decay_JRHG = glast_JRHG1.squeeze(-1).exp() * cont_J1111[..., 0]
    if first_J111L is not None:  # several documents in the chunk: the carried state is replaced
        carry_decay_JRHG = carry_decay_JRHG * first_J111L[..., -1]

    o_extra, inject_js, inject_nMKV = None, [], None
    if h0 is not None:  # added to the state at a chunk's start: [1, B * HV] unpacked, [n, HV] packed
        inject_js = list(seg.reset_js)
        inject_nMKV = h0[seg.reset_docs].reshape(len(seg.reset_js), M, K, V)
        if seg.mid_docs:
            u_JRHGLV, o_extra, carry_nMKV = _mid_initial_states(seg, h0, w_JRHGLK, qd_JRHGLK, u_JRHGLV, gseg_JRHGL)
            w_JRHGLK, qd_JRHGLK = w_JRHGLK * first_J111L[..., None], qd_JRHGLK * first_J111L[..., None]
            if carry_nMKV is not None:
                inject_js += [c + 1 for c in seg.carry_js]
                inject_nMKV = torch.cat([inject_nMKV, carry_nMKV])
    states = states_by_loop if state_scan == "loop" else states_by_scan
    s_JMKV, v_new_JMLV = states(
        u_JRHGLV.reshape(J, M, L, V),
        w_JRHGLK.reshape(J, M, L, K),
        kd_JRHGLK.reshape(J, M, L, K),
        carry_decay_JRHG.reshape(J, M),
        inject_js,
        inject_nMKV,
    )
    s_JRHGKV = s_JMKV.reshape(J, R, H, G, K, V)
    v_new_JRHGLV = v_new_JMLV.reshape(J, R, H, G, L, V)
    qk_JRH1LL = q_JRH1LK @ k_JRH1LK.transpose(-1, -2)
    o_JRHGLV = (qk_JRH1LL * decay_JRHGLL) @ v_new_JRHGLV + qd_JRHGLK @ s_JRHGKV
    if o_extra is not None:
        o_JRHGLV = o_JRHGLV.index_add(0, torch.tensor(seg.mid_c, device=q.device), o_extra)
    o = o_JRHGLV.permute(1, 0, 4, 2, 3, 5).reshape(R, J * L, HV, V)[:, :T].to(out_dtype)
    if not output_final_state:
        return o, None
    return o, _final_states(seg, h0, k_JRH1LK, gseg_JRHGL, v_new_JRHGLV, s_JRHGKV).reshape(-1, HV, K, V)


def _rows(c: list[int], s: list[int], e: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk index [n], slot mask [n, L] of slots s..e) for host lists."""
    pos_L = torch.arange(CHUNK, device=device)
    s_n1, e_n1 = (torch.tensor(x, device=device)[:, None] for x in (s, e))
    return torch.tensor(c, device=device), (pos_L >= s_n1) & (pos_L <= e_n1)


# The two functions below gather from computed tensors with host-made indices, and run eagerly
# even under torch.compile: fused into the surrounding graph, inductor's CPU backend (torch 2.13,
# vectorised code) miscompiled both, off by 10-100% (GPU inductor was right). Only calls with
# initial or final states take them, and those specialise on the host lists anyway.
@torch.compiler.disable
def _mid_initial_states(seg, h0_NHVKV, w_JRHGLK, qd_JRHGLK, u_JRHGLV, gseg_JRHGL):
    """For documents starting mid-chunk (packed row, R = 1), what their initial state adds:
    -W h0 to their rows of U, Qd h0 to their outputs, e^{G_last} h0 to the carried state."""
    c_n, rows_nL = _rows(seg.mid_c, seg.mid_s, seg.mid_e, h0_NHVKV.device)
    _, H, G, L, K = w_JRHGLK.shape[1:]
    V = u_JRHGLV.shape[-1]
    h0_nHGKV = h0_NHVKV[seg.mid_docs].reshape(-1, H, G, K, V)
    rows_n11L1 = rows_nL[:, None, None, :, None]
    u_fix = (w_JRHGLK[c_n, 0] * rows_n11L1) @ h0_nHGKV
    o_extra = ((qd_JRHGLK[c_n, 0] * rows_n11L1) @ h0_nHGKV).unsqueeze(1)
    u_JRHGLV = u_JRHGLV.index_add(0, c_n, u_fix.unsqueeze(1), alpha=-1.0)
    carry_nMKV = None
    if seg.carry_js:
        picks = torch.tensor(seg.carry_mids, device=h0_NHVKV.device)
        glast_nHG = gseg_JRHGL[torch.tensor(seg.carry_js, device=h0_NHVKV.device), 0, ..., -1]
        carry_nMKV = (glast_nHG.exp()[..., None, None] * h0_nHGKV[picks]).reshape(len(seg.carry_js), -1, K, V)
    return u_JRHGLV, o_extra, carry_nMKV


@torch.compiler.disable
def _final_states(seg, h0_NHVKV, k_JRH1LK, gseg_JRHGL, v_new_JRHGLV, s_JRHGKV) -> torch.Tensor:
    """State after each document's last token, from its last chunk:
    e^{G_e} S_seg + sum over its slots i <= e of k_i e^{G_e - G_i} v_new_i^T, where S_seg is the
    chunk's carried state, or the document's initial state (zeros) if it started in the chunk."""
    device = k_JRH1LK.device
    c_n, rows_nL = _rows(seg.fin_c, seg.fin_s, seg.fin_e, device)
    r_n, e_n = torch.tensor(seg.fin_r, device=device), torch.tensor(seg.fin_e, device=device)
    gseg_nHGL = gseg_JRHGL[c_n, r_n]
    ge_nHG1 = gseg_nHGL.gather(-1, e_n[:, None, None, None].expand(*gseg_nHGL.shape[:-1], 1))
    kf_nHGLK = _exp_masked(ge_nHG1 - gseg_nHGL, rows_nL[:, None, None, :])[..., None] * k_JRH1LK[c_n, r_n]
    s_seg_nHGKV = s_JRHGKV[c_n, r_n]
    if any(seg.fin_mid):
        mid_n11111 = torch.tensor(seg.fin_mid, device=device)[:, None, None, None, None]
        own = torch.zeros_like(s_seg_nHGKV) if h0_NHVKV is None else h0_NHVKV.reshape(s_seg_nHGKV.shape)
        s_seg_nHGKV = torch.where(mid_n11111, own, s_seg_nHGKV)
    return kf_nHGLK.transpose(-1, -2) @ v_new_JRHGLV[c_n, r_n] + ge_nHG1.exp()[..., None] * s_seg_nHGKV
