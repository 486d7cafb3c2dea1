"""Ulysses sequence parallelism: all-to-all from sequence shards to head shards and back.

Each rank turns its T/P tokens of every head into all T tokens of its 1/P of the heads, runs the
packed-row op on the whole row with the global document offsets (so documents cut by rank
boundaries need nothing special), and turns the result back. Heads with fewer copies than ranks
(attention KV heads, GDN key heads) are replicated before the exchange; autograd sums the copies'
gradients. Norms, gates and output projections stay on the local tokens; so do the input
projections, except Gated DeltaNet's where it all-gathers its input instead (SequenceParallel's
gdn_exchange). Both layer kinds may instead keep the whole layer on the head shard
("gather_scatter"): all-gather the input, project, run and output-project the rank's heads over the
whole row, and reduce-scatter the output projection's partial sums back to the tokens' ranks
(gdn_exchange, attention_exchange).
"""

from __future__ import annotations

import functools

import torch

from padfree.models.layers import (
    attention_heads, attention_output, attention_qkv, gdn_gate_inputs, gdn_output, gdn_projections,
)  # fmt: skip
from padfree.ops.attention import varlen_attention
from padfree.ops.gated_delta import chunk_gated_delta_rule
from padfree.parallel.comm import all_gather_stack, functional_reduce_scatter_sum, heads_to_seq, seq_to_heads
from padfree.parallel.fused import gather_matmul, matmul_scatter
from padfree.parallel.shard import ShardedRow


def _heads_of_rank(rank: int, degree: int, heads: int) -> list[int]:
    """The heads rank `rank` of `degree` holds: a 1/degree slice, or one replicated head when there
    are fewer heads than ranks (resolve_modes checks that one divides the other)."""
    if degree <= heads:
        return list(range(rank * heads // degree, (rank + 1) * heads // degree))
    return [rank // (degree // heads)]


@functools.cache
def _gdn_channels(
    degree: int, H: int, HV: int, K: int, V: int, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Column order of [mixed_qkv | b | a] that lays out each rank's heads side by side, and each
    rank's conv channels within mixed_qkv = [q (H*K) | k (H*K) | v (HV*V)]. Cached per device: built
    and copied once, not in every layer of every step."""
    order, conv = [], []
    for r in range(degree):
        value_heads = _heads_of_rank(r, degree, HV)
        key_heads = sorted({h // (HV // H) for h in value_heads})
        q = [torch.arange(h * K, (h + 1) * K) for h in key_heads]
        k = [H * K + c for c in q]
        v = [torch.arange(2 * H * K + h * V, 2 * H * K + (h + 1) * V) for h in value_heads]
        channels = torch.cat(q + k + v)
        C = 2 * H * K + HV * V
        gates = torch.tensor(value_heads)
        order.append(torch.cat([channels, C + gates, C + HV + gates]))
        conv.append(channels.to(device))
    return torch.cat(order).to(device), conv


def _plain_linear(layer) -> bool:
    """Whether `layer` is an nn.Linear whose output is exactly x @ weight.T from a plain tensor: no subclass
    (LoRA, float8, FSDP-wrapped), no bias, no hooks and no replaced forward (ZeRO-3 and accelerate's
    offloading fetch the weight there), no tensor-subclass weight (DTensor, quantized)."""
    from torch.nn.modules import module as module_state

    return (
        type(layer) is torch.nn.Linear and layer.bias is None
        and type(layer.weight) in (torch.Tensor, torch.nn.Parameter)
        and not (layer._forward_hooks or layer._forward_pre_hooks or "forward" in vars(layer))
        and not (module_state._global_forward_hooks or module_state._global_forward_pre_hooks)
    )  # fmt: skip


def _plain_projections(module) -> bool:
    """Whether the GDN layer's input projections of q, k, v, b and a are three plain linear layers (Qwen3.5;
    `_plain_linear`), whose weight rows Ulysses may take directly; not Qwen3-Next's fused head-interleaved
    projection, nor LoRA or other wrapped layers, which it calls."""
    names = ("in_proj_qkv", "in_proj_b", "in_proj_a")
    return all(getattr(module, name, None) is not None and _plain_linear(getattr(module, name)) for name in names)


def _hidden_transfers(sp) -> bool:
    """Whether "auto" may take gather_scatter whatever it moves: over symmetric memory its transfers run beside its
    matmuls (padfree.parallel.fused), and it beat the all-to-alls where it moves more bytes than they do: the ~4B
    shape at sp=2 (1.25x: 0.925 against 0.896 of the one-GPU throughput) and the 0.8B shape at sp=4 (2x: 0.851
    against 0.824), 2x and 4x H200, docs/benchmarks.md, seventeenth session."""
    return sp.collectives == "symmetric_memory"


def _gdn_exchange(setting: str, sp, module, hidden: int, C: int) -> str:
    """"inputs", "projections" or "gather_scatter" for SequenceParallel.gdn_exchange `setting`
    (padfree.parallel.mesh says what each moves)."""
    P = sp.size
    plain = _plain_projections(module)
    scatter_ok = plain and _plain_linear(module.in_proj_z) and _plain_linear(module.out_proj)
    if setting == "gather_scatter" and scatter_ok:
        return setting
    fewer_bytes = P * hidden <= module.num_v_heads * module.head_v_dim
    if setting == "auto" and scatter_ok and (fewer_bytes or _hidden_transfers(sp)):
        return "gather_scatter"
    if not plain:
        return "projections"
    if setting in ("auto", "gather_scatter"):
        return "inputs" if P * hidden < C else "projections"
    return setting


def _gdn_send_buffer(module, hidden_1TC: torch.Tensor, order: torch.Tensor, P: int):
    """(send [P, T_local, C / P]: the columns of [mixed_qkv | b | a] each rank gets, in `order`; z [1, T, HV, Dv]).

    Where the three projections are plain linear layers (`_plain_projections`), their weight rows are put
    in `order` and the send layout comes from the weights directly, instead of the module outputs'
    concatenation, column reorder and transposing copy (three passes over the [T_local, C] projection
    output each way). Elsewhere (Qwen3-Next's fused head-interleaved projection, LoRA or other wrapped
    layers) it does just that, from the modules' own outputs.
    - P * hidden <= C: one torch.bmm on the input expanded (not copied) over P writes the layout; its
      backward sums a [P, T_local, hidden] gradient, fewer bytes than one [T_local, C] pass here.
      torch.bmm, not torch.matmul(2-D, 3-D): matmul computes that product transposed, and the
      [P, C / P, T] result then took a 0.68 ms transposing copy per layer each way (16,384-token
      shard, H200 profile, twelfth session, docs/benchmarks.md).
    - Larger P: one matmul, then one transposing copy into the layout.
    """
    if _plain_projections(module):
        weights = [module.in_proj_qkv.weight, module.in_proj_b.weight, module.in_proj_a.weight]
        weight = torch.cat(weights).index_select(0, order)  # [C, hidden], small
        x_TC = hidden_1TC[0]
        C, hidden = weight.shape
        if P * hidden <= C:
            send_PTC = torch.bmm(x_TC.expand(P, *x_TC.shape), weight.unflatten(0, (P, -1)).transpose(1, 2))
        else:
            send_PTC = (x_TC @ weight.T).unflatten(1, (P, -1)).transpose(0, 1).contiguous()
        z_1THD = module.in_proj_z(hidden_1TC).unflatten(-1, (-1, module.head_v_dim))
        return send_PTC, z_1THD
    mixed_qkv, z_1THD, b_1TH, a_1TH = gdn_projections(module, hidden_1TC)
    local = torch.cat([mixed_qkv[0], b_1TH[0].to(mixed_qkv.dtype), a_1TH[0].to(mixed_qkv.dtype)], dim=-1)
    # index_select, not local[:, order]: advanced indexing's backward is a deterministic index_put
    # (sort + accumulate) that took 20 ms per layer on a 16k-token shard (H200 profile, fifth session,
    # docs/benchmarks.md), 40% of the step; index_select's backward is one index_add_ (atomic adds;
    # under torch.use_deterministic_algorithms torch picks its deterministic, slower path itself).
    return local.index_select(1, order).unflatten(1, (P, -1)).transpose(0, 1).contiguous(), z_1THD


def _gathered_projections(hidden_1TC: torch.Tensor, weights: list[torch.Tensor], sp) -> list[torch.Tensor]:
    """[x @ w.T for w in weights] ([1, T, ...] each), x [1, T, C] the all-gather of every rank's `hidden_1TC`: this
    rank's projections of the whole row onto its weight rows. One autograd function for the all-gather and the
    products (padfree.parallel.fused), pipelined over symmetric memory with collectives="symmetric_memory"; the
    functional collectives compose PyTorch's autograd all-gather with the matmuls instead. (A backward that ran the
    input gradient's reduce-scatter beside the weight gradients overlapped them on the GPU but bought nothing
    measurable: 0.892 against 0.893 of the one-GPU throughput, 2x H200, sixteenth session, docs/benchmarks.md.)"""
    if sp.collectives == "functional":
        x_1TC = all_gather_stack(hidden_1TC[0], sp.group, sp.collectives).flatten(0, 1)[None]
        return [x_1TC @ w.T for w in weights]
    return [y[None] for y in gather_matmul(hidden_1TC[0], weights, sp)]


def _scattered_projection(x_TC: torch.Tensor, weight_columns: torch.Tensor, sp) -> torch.Tensor:
    """[1, T_local, hidden]: x [T, k] of this rank's heads over the whole row, times its columns of an output
    projection ([hidden, k]) -> its share of every token's output, summed over the ranks by the reduce-scatter
    and handed to the tokens' ranks (the gather_scatter exchange's way back; _gathered_projections' mirror)."""
    if sp.collectives == "functional":
        shares = x_TC @ weight_columns.T  # [T, hidden]
        return functional_reduce_scatter_sum(shares.unflatten(0, (sp.size, -1)), sp.group)[None]
    return matmul_scatter(x_TC, weight_columns, sp)[None]


def _gdn_row_from_inputs(module, hidden_1TC: torch.Tensor, channels: torch.Tensor, value_heads: slice, sp, z: bool):
    """(mixed_qkv [1, T, this rank's conv channels], b, a [1, T, its value heads], and with `z` its z [1, T, n * V])
    over the whole row, from the all-gathered input and this rank's rows of the projection weights. The same
    values as the all-to-all of the projections, from P * hidden / C of the bytes (1/3 for Qwen3.5-0.8B at
    P = 2) and the same matmul FLOPs: each rank projects all T tokens onto its C / P columns instead of its
    T / P tokens onto all C. mixed_qkv gets its own matmul so it is contiguous: a slice of one [T, C / P]
    product made the conv copy its strided input (0.23 ms a layer) and the slice's backward concatenate the
    gradients (H200 profile, thirteenth session, docs/benchmarks.md). The all-gather's backward is the
    reduce-scatter of the input's gradient; each rank's weight gradient covers its own rows only, and
    reduce_gradients (or FSDP) sums them over the group."""
    V = module.head_v_dim
    weights = [
        module.in_proj_qkv.weight.index_select(0, channels),
        torch.cat([module.in_proj_b.weight[value_heads], module.in_proj_a.weight[value_heads]]),  # [2n, hidden]
    ]
    if z:
        weights.append(module.in_proj_z.weight[value_heads.start * V : value_heads.stop * V])
    mixed_qkv, gates, *z_1TC = _gathered_projections(hidden_1TC, weights, sp)
    b, a = gates.chunk(2, dim=-1)
    return mixed_qkv, b, a, *z_1TC


def _gdn_scattered_output(module, o_1THD: torch.Tensor, z_1TC: torch.Tensor, value_heads: slice, sp) -> torch.Tensor:
    """gdn_exchange "gather_scatter": [1, T_local, C] of the layer's output, from this rank's heads `o_1THD`
    [1, T, n, V] over the whole row. z (projected from the all-gathered input with this rank's rows of
    in_proj_z, by _gdn_row_from_inputs) and the gated norm are per head, so they run here; out_proj of this
    rank's heads is this rank's share of every token's output ([T, hidden], its columns of the weight), and
    the reduce-scatter sums the shares and hands each rank its tokens. What this replaces, the all-to-all of o back to the tokens' ranks, arrives
    as [P, T_local, n * V] and took a transposing copy into [T_local, HV * V] each way (78 strided copies,
    5.3 ms of a 258 ms sp=2 step, H200 profile, fifteenth session, docs/benchmarks.md). The weight
    gradients cover this rank's rows of in_proj_z and columns of out_proj; the group's sum completes them."""
    V = module.head_v_dim
    columns = slice(value_heads.start * V, value_heads.stop * V)
    o = module.norm(o_1THD.reshape(-1, V), z_1TC.reshape(-1, V))
    return _scattered_projection(o.reshape(-1, columns.stop - columns.start), module.out_proj.weight[:, columns], sp)


def gated_deltanet_ulysses(module, hidden_1TC: torch.Tensor, row: ShardedRow, backend: str) -> torch.Tensor:
    sp = row.sp
    P, r = sp.size, sp.rank
    H, HV = module.num_k_heads, module.num_v_heads
    order, conv = _gdn_channels(P, H, HV, module.head_k_dim, module.head_v_dim, hidden_1TC.device)
    exchange = _gdn_exchange(sp.gdn_exchange, sp, module, hidden_1TC.shape[-1], order.numel())
    value_heads = _heads_of_rank(r, P, HV)
    heads = slice(value_heads[0], value_heads[-1] + 1)
    n = len(value_heads)
    if exchange == "gather_scatter":
        mixed_r, b_r, a_r, z_r = _gdn_row_from_inputs(module, hidden_1TC, conv[r], heads, sp, z=True)
    elif exchange == "inputs":
        mixed_r, b_r, a_r = _gdn_row_from_inputs(module, hidden_1TC, conv[r], heads, sp, z=False)
        z_1THD = module.in_proj_z(hidden_1TC).unflatten(-1, (-1, module.head_v_dim))
    else:
        send_PTC, z_1THD = _gdn_send_buffer(module, hidden_1TC, order, P)
        row_TC = seq_to_heads(send_PTC, sp.group, sp.collectives)  # [T, this rank's columns]
        mixed_r, b_r, a_r = torch.split(row_TC[None], [row_TC.shape[1] - 2 * n, n, n], dim=-1)
    q, k, v, g, beta = gdn_gate_inputs(
        module, mixed_r, b_r, a_r, row.packed, backend,
        channels=conv[r], value_heads=heads,
    )  # fmt: skip
    o_1THD, _ = chunk_gated_delta_rule(
        q, k, v, g, beta, cu_seqlens=row.packed.cu_seqlens, cu_seqlens_cpu=row.packed.cu_seqlens_host,
        chunk_indices=row.packed.chunk_indices, use_qk_l2norm_in_kernel=True, backend=backend,
    )  # fmt: skip
    if exchange == "gather_scatter":
        return _gdn_scattered_output(module, o_1THD, z_r, heads, sp)
    o_TPHD = heads_to_seq(o_1THD[0].flatten(1), sp.group, sp.collectives)  # [T_local, P, n * Dv]
    return gdn_output(module, o_TPHD.reshape(1, o_TPHD.shape[0], HV, -1), z_1THD)


def _attention_exchange(setting: str, sp, module, hidden: int) -> str:
    """"projections" or "gather_scatter" for SequenceParallel.attention_exchange `setting` (padfree.parallel.mesh)."""
    if not all(_plain_linear(getattr(module, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "projections"
    if setting == "auto":
        fewer_bytes = sp.size * hidden <= module.o_proj.in_features
        return "gather_scatter" if fewer_bytes or _hidden_transfers(sp) else "projections"
    return setting


def _attention_gather_scatter(module, hidden_1TC, position_embeddings, row: ShardedRow, backend: str):
    """attention_exchange "gather_scatter": [1, T_local, C] of the layer's output. The input and the rotary
    tables are all-gathered; this rank projects its query heads (with their output gates) and the KV heads they
    read over the whole row from the weights' rows, attends, gates, and multiplies by its columns of o_proj:
    its share of every token's output, which the reduce-scatter sums and hands back to the tokens' ranks. No
    transposing copies (the all-to-alls' [P, T_local, ...] layouts took them, and the split K and V each a
    contiguous copy); the weight gradients cover this rank's rows and columns, the group's sum completes them."""
    sp = row.sp
    P, r = sp.size, sp.rank
    D = module.head_dim
    H, HKV = module.o_proj.in_features // D, module.k_proj.out_features // D
    heads, kv = _heads_of_rank(r, P, H), _heads_of_rank(r, P, HKV)
    heads, kv = slice(heads[0], heads[-1] + 1), slice(kv[0], kv[-1] + 1)
    weights = [
        module.q_proj.weight[heads.start * 2 * D : heads.stop * 2 * D],  # per head: [q | gate]
        module.k_proj.weight[kv.start * D : kv.stop * D],
        module.v_proj.weight[kv.start * D : kv.stop * D],
    ]
    q_gate, k, v = _gathered_projections(hidden_1TC, weights, sp)
    cos, sin = position_embeddings  # [1, T_local, rotary dims] each, no gradient: gathered as one buffer
    cos_sin = all_gather_stack(torch.cat([cos[0], sin[0]], dim=-1), sp.group, sp.collectives).flatten(0, 1)[None]
    q_1THD, k_1THD, v_1THD, gate_1THD = attention_heads(module, q_gate, k, v, cos_sin.chunk(2, dim=-1))
    o_THD = varlen_attention(
        q_1THD[0], k_1THD[0], v_1THD[0], row.packed.cu_seqlens, row.packed.max_seqlen,
        scale=module.scaling, backend=backend, cu_seqlens_host=row.packed.cu_seqlens_host,
        trust_offsets=row.packed.chunk_indices is not None,  # a fixed-shape row (padfree.static_row), checked on fill
    )  # fmt: skip
    T = o_THD.shape[0]
    o_TC = o_THD.reshape(T, -1) * torch.sigmoid(gate_1THD.reshape(T, -1))
    return _scattered_projection(o_TC, module.o_proj.weight[:, heads.start * D : heads.stop * D], sp)


def attention_ulysses(module, hidden_1TC, position_embeddings, row: ShardedRow, backend: str):
    sp = row.sp
    P = sp.size
    if _attention_exchange(sp.attention_exchange, sp, module, hidden_1TC.shape[-1]) == "gather_scatter":
        return _attention_gather_scatter(module, hidden_1TC, position_embeddings, row, backend), None
    q_1THD, k_1THD, v_1THD, gate_1THD = attention_qkv(module, hidden_1TC, position_embeddings)
    HKV = k_1THD.shape[2]
    if P > HKV:  # replicate: rank r reads KV head r // (P // HKV), the one its query heads share
        k_1THD, v_1THD = (t.repeat_interleave(P // HKV, dim=2) for t in (k_1THD, v_1THD))
    T_local, D = q_1THD.shape[1], q_1THD.shape[3]
    # [P, T_local, h, D] views: the one cat writes the send layout (no transposing copy after it)
    heads = [t[0].unflatten(1, (P, -1)).transpose(0, 1) for t in (q_1THD, k_1THD, v_1THD)]
    sizes = [t.shape[2] for t in heads]
    row_T = seq_to_heads(torch.cat(heads, dim=2).flatten(2), sp.group, sp.collectives).unflatten(1, (-1, D))
    q_THD, k_THD, v_THD = torch.split(row_T, sizes, dim=1)
    o_THD = varlen_attention(
        q_THD, k_THD.contiguous(), v_THD.contiguous(), row.packed.cu_seqlens, row.packed.max_seqlen,
        scale=module.scaling, backend=backend, cu_seqlens_host=row.packed.cu_seqlens_host,
        trust_offsets=row.packed.chunk_indices is not None,  # a fixed-shape row (padfree.static_row), checked on fill
    )  # fmt: skip
    o_local = heads_to_seq(o_THD.flatten(1), sp.group, sp.collectives).reshape(T_local, -1, D)
    return attention_output(module, o_local, gate_1THD), None
