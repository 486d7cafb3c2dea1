"""Context parallelism: every rank keeps its T/P tokens and all heads; works at any degree.

Gated DeltaNet, by state passing. The recurrence is linear in its state: over a piece of a
document, S_end = M S_start + S_zero, where S_zero is the piece's final state from a zero start
and M [K, K] its transition (the product of e^g (I - beta k k^T) over the piece's tokens). Both
come from one call of the same kernel: run the piece with values [v | 0] and initial state
[0 | I]; the state's V columns end as S_zero and its K columns as M. Only a rank's last piece can
continue on the next rank, so each rank all-gathers one (S_zero, M) pair per rank and chains the
pairs of the ranks its first document spans: S = M_j S + S_zero_j. Then it runs its tokens with
that initial state. Cost: one extra pass over the last piece (V + K wide), only on ranks whose last
document goes on to the next rank (never on the last rank); bytes: P * HV * K * (V + K).
The conv's W - 1 token halo comes from an all-gather of every rank's last W - 1 inputs.

Attention: all-gather K and V (Qwen3.5 has 2-4 KV heads: cheap), then each rank's queries attend
to their document's keys from its start, bottom-right causal (padfree.ops.attention).
"""

from __future__ import annotations

import functools

import torch

from padfree.models.layers import (
    attention_output, attention_qkv, gdn_gate_inputs, gdn_output, gdn_projections,
)  # fmt: skip
from padfree.ops.attention import varlen_attention
from padfree.ops.gated_delta import chunk_gated_delta_rule
from padfree.parallel.comm import all_gather_stack, keep_in_graph
from padfree.parallel.shard import ShardedRow


def gated_deltanet_context(module, hidden_1TC: torch.Tensor, row: ShardedRow, backend: str) -> torch.Tensor:
    mixed_qkv, z_1THD, b_1TH, a_1TH = gdn_projections(module, hidden_1TC)
    width = module.conv1d.weight.shape[-1]
    tail = min(width - 1, row.shard_len)
    tails = all_gather_stack(mixed_qkv[0, -tail:], row.sp.group, row.sp.collectives)
    conv_state = _halo_state(mixed_qkv, tails, tail, row, width)
    q, k, v, g, beta = gdn_gate_inputs(module, mixed_qkv, b_1TH, a_1TH, row.local, backend, conv_state=conv_state)
    if row.continues_on_next_rank:
        summary = _last_piece_summary(q, k, v, g, beta, row, backend)
    else:
        summary = _unread_summary(k, v)
    summaries = all_gather_stack(summary, row.sp.group, row.sp.collectives)
    initial_state = _initial_states(summaries, row, v)
    if conv_state is None:  # this rank used nobody's halo; its backward must still join the collective
        q = keep_in_graph(q, tails)
    o_1THD, _ = chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=initial_state,
        cu_seqlens=row.local.cu_seqlens, cu_seqlens_cpu=row.local.cu_seqlens_host,
        use_qk_l2norm_in_kernel=True, backend=backend,
    )  # fmt: skip
    if initial_state is None:
        o_1THD = keep_in_graph(o_1THD, summaries)
    return gdn_output(module, o_1THD, z_1THD)


@functools.lru_cache(maxsize=64)
def _halo_columns(start: int, shard_len: int, first_doc_start: int, width: int, tail: int, device: torch.device):
    """(rows of the gathered tails [P * tail] for conv-state columns 0..W-1, which of them are in the
    document). Column c holds token start - W + c, read from the rank that owns it. Cached: the same
    for every GDN layer of a row."""
    index, valid = [], []
    for c in range(width):
        position = start - width + c
        rank = position // shard_len
        slot = position - ((rank + 1) * shard_len - tail)  # where it sits in that rank's tail
        ok = position >= first_doc_start and slot >= 0
        index.append(rank * tail + slot if ok else 0)
        valid.append(ok)
    return torch.tensor(index).to(device), torch.tensor(valid).to(device)


def _halo_state(mixed_qkv, tails, tail: int, row: ShardedRow, width: int) -> torch.Tensor | None:
    """Initial conv state [N_local, C, W]: zeros, but for a first document that began on an earlier
    rank, its last W inputs before this rank's start (0 where they precede the document)."""
    if row.first_doc_start == row.start:
        return None
    index, valid = _halo_columns(row.start, row.shard_len, row.first_doc_start, width, tail, mixed_qkv.device)
    columns_WC = tails.flatten(0, 1)[index] * valid[:, None].to(tails.dtype)
    others = columns_WC.new_zeros(row.local.num_docs - 1, columns_WC.shape[1], width)
    return torch.cat([columns_WC.T[None], others])


def _last_piece_summary(q, k, v, g, beta, row: ShardedRow, backend: str) -> torch.Tensor:
    """[HV, K, V + K]: the last local piece's final state from zero (V columns) and transition (K columns)."""
    a = row.local.cu_seqlens_host[-2]
    K = q.shape[-1]
    v_piece = v[:, a:]
    v_wide = torch.cat([v_piece, v_piece.new_zeros(*v_piece.shape[:3], K)], dim=-1)
    HV, V = v.shape[2], v.shape[3]
    identity = torch.eye(K, device=v.device, dtype=torch.float32).expand(1, HV, K, K)
    start = torch.cat([identity.new_zeros(1, HV, K, V), identity], dim=-1)
    _, final = chunk_gated_delta_rule(
        q[:, a:], k[:, a:], v_wide, g[:, a:], beta[:, a:], initial_state=start, output_final_state=True,
        use_qk_l2norm_in_kernel=True, backend=backend,
    )  # fmt: skip
    return final[0]


def _unread_summary(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Zeros of a summary's shape and dtype (final states are fp32 in every backend) in place of one
    no rank reads (the next rank starts a new document, or there is none): skips the V + K wide pass.
    The all-gather still needs this rank's part, and its backward (a reduce-scatter the other ranks
    wait for) runs only if the part is in the autograd graph: hence the zero-weighted tie to v."""
    HV, V, K = v.shape[2], v.shape[3], k.shape[-1]
    return keep_in_graph(v.new_zeros(HV, K, V + K, dtype=torch.float32), v[0, :1, :1, :1])


def _initial_states(summaries: torch.Tensor, row: ShardedRow, v: torch.Tensor) -> torch.Tensor | None:
    """[N_local, HV, K, V] initial states (only the first document's can be non-zero), or None."""
    if row.first_doc_start == row.start:
        return None
    V = v.shape[-1]
    first_rank = row.first_doc_start // row.shard_len
    state = None
    for j in range(first_rank, row.sp.rank):  # the document's pieces on earlier ranks, in order
        S_zero, M = summaries[j][..., :V], summaries[j][..., V:]
        state = S_zero if state is None else M @ state + S_zero
    others = state.new_zeros(row.local.num_docs - 1, *state.shape)
    return torch.cat([state[None], others])


def attention_context(module, hidden_1TC, position_embeddings, row: ShardedRow, backend: str):
    q_1THD, k_1THD, v_1THD, gate_1THD = attention_qkv(module, hidden_1TC, position_embeddings)
    HKV = k_1THD.shape[2]
    kv_PTHD = all_gather_stack(torch.cat([k_1THD[0], v_1THD[0]], dim=1), row.sp.group, row.sp.collectives)
    # keys of this rank's documents: from its first document's start up to its last token
    kv_THD = kv_PTHD.flatten(0, 1)[row.first_doc_start : row.end]
    k_THD, v_THD = kv_THD[:, :HKV].contiguous(), kv_THD[:, HKV:].contiguous()
    offsets_k, cu_k, max_k = row.key_offsets
    o_THD = varlen_attention(
        q_1THD[0], k_THD, v_THD, row.local.cu_seqlens, row.local.max_seqlen, scale=module.scaling,
        backend=backend, cu_seqlens_host=row.local.cu_seqlens_host,
        cu_seqlens_k=cu_k, max_seqlen_k=max_k, cu_seqlens_k_host=offsets_k,
    )  # fmt: skip
    return attention_output(module, o_THD, gate_1THD), None
