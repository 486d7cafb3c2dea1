"""Packed-row forwards for the two token mixers of Qwen3.5-family models.

Each function takes the upstream module (its parameters and sizes are used as they are) and a
`PackedBatch`, and computes what the upstream forward computes for each document on its own, in
one pass over the packed row. Only the parts that would mix documents change: the causal conv1d
and the gated delta rule take `cu_seqlens`, and attention is varlen. Everything else (projections,
norms, gates, rotary embeddings) is the module's own code or transformers' own function.

Shapes: T tokens of the row (batch is 1), H heads, HV value heads, D head dim.
"""

from __future__ import annotations

import sys

import torch

from padfree.ops.attention import varlen_attention
from padfree.ops.conv1d import causal_conv1d
from padfree.ops.gated_delta import chunk_gated_delta_rule, gdn_decay
from padfree.ops.rotary import apply_rotary
from padfree.varlen import PackedBatch


def gdn_projections(module, hidden_1TC: torch.Tensor):
    """(mixed_qkv [1, T, 2*H*Dk + HV*Dv], z [1, T, HV, Dv], b [1, T, HV], a [1, T, HV]) of a GDN layer."""
    if hasattr(module, "in_proj_qkvz"):  # Qwen3-Next: one fused projection with a head-interleaved layout
        q, k, v, z, b, a = module.fix_query_key_value_ordering(
            module.in_proj_qkvz(hidden_1TC), module.in_proj_ba(hidden_1TC)
        )
        mixed_qkv = torch.cat([x.flatten(2) for x in (q, k, v)], dim=-1)
        return mixed_qkv, z, b, a
    z = module.in_proj_z(hidden_1TC).unflatten(-1, (-1, module.head_v_dim))
    return module.in_proj_qkv(hidden_1TC), z, module.in_proj_b(hidden_1TC), module.in_proj_a(hidden_1TC)


def gdn_gate_inputs(
    module, mixed_qkv_1TC, b_1TH, a_1TH, packed: PackedBatch, backend: str, *,
    channels: torch.Tensor | None = None, value_heads: slice | None = None, conv_state: torch.Tensor | None = None,
):  # fmt: skip
    """The conv and gates of a GDN layer: (q, k [1, T, H, Dk], v [1, T, HV, Dv], g, beta [1, T, HV]).

    For a head shard (sequence parallelism) `channels` picks the conv channels of mixed_qkv and
    `value_heads` the value heads of b and a; `conv_state` is the conv's initial_state per document.
    """
    weight, bias = module.conv1d.weight.squeeze(1), module.conv1d.bias
    A_log, dt_bias = module.A_log, module.dt_bias
    if channels is not None:
        # index_select: its backward is an index_add_, not advanced indexing's sort-based index_put
        weight, bias = weight.index_select(0, channels), None if bias is None else bias.index_select(0, channels)
    if value_heads is not None:
        A_log, dt_bias = A_log[value_heads], dt_bias[value_heads]
    value_width = b_1TH.shape[-1] * module.head_v_dim
    key_width = (mixed_qkv_1TC.shape[-1] - value_width) // 2
    # q, k, v as three contiguous tensors straight from the conv (on "triton" its kernel writes them, and
    # takes their gradients as they come): no copy of strided slices, no torch.cat of their gradients
    q, k, v = causal_conv1d(
        mixed_qkv_1TC, weight, bias, activation=module.activation, initial_state=conv_state,
        cu_seqlens=packed.cu_seqlens, cu_seqlens_cpu=packed.cu_seqlens_host, chunk_indices=packed.chunk_indices,
        backend=backend, split_sizes=[key_width, key_width, value_width],
    )  # fmt: skip
    q_1THD = q.unflatten(-1, (-1, module.head_k_dim))
    k_1THD = k.unflatten(-1, (-1, module.head_k_dim))
    v_1THD = v.unflatten(-1, (-1, module.head_v_dim))
    return q_1THD, k_1THD, v_1THD, gdn_decay(a_1TH, A_log, dt_bias), b_1TH.sigmoid()


def gdn_output(module, o_1THD: torch.Tensor, z_1THD: torch.Tensor) -> torch.Tensor:
    """The gated RMSNorm (per head, with z) and out_proj of a GDN layer: [1, T, HV, Dv] -> [1, T, C]."""
    o = module.norm(o_1THD.reshape(-1, module.head_v_dim), z_1THD.reshape(-1, module.head_v_dim))
    return module.out_proj(o.reshape(o_1THD.shape[0], o_1THD.shape[1], -1))


def gated_deltanet_packed(module, hidden_1TC: torch.Tensor, packed: PackedBatch, backend: str) -> torch.Tensor:
    """A Qwen3.5 / Qwen3-Next Gated DeltaNet layer over a packed row; state restarts per document."""
    mixed_qkv, z_1THD, b_1TH, a_1TH = gdn_projections(module, hidden_1TC)
    q_1THD, k_1THD, v_1THD, g_1TH, beta_1TH = gdn_gate_inputs(module, mixed_qkv, b_1TH, a_1TH, packed, backend)
    o_1THD, _ = chunk_gated_delta_rule(
        q_1THD, k_1THD, v_1THD, g_1TH, beta_1TH,
        cu_seqlens=packed.cu_seqlens, cu_seqlens_cpu=packed.cu_seqlens_host, chunk_indices=packed.chunk_indices,
        use_qk_l2norm_in_kernel=True, backend=backend,
    )  # fmt: skip
    return gdn_output(module, o_1THD, z_1THD)


def attention_qkv(module, hidden_1TC: torch.Tensor, position_embeddings):
    """(q [1, T, H, D] normed and rotated, k, v [1, T, HKV, D], output gate [1, T, H, D]) of an attention layer."""
    q_gate = module.q_proj(hidden_1TC)
    return attention_heads(module, q_gate, module.k_proj(hidden_1TC), module.v_proj(hidden_1TC), position_embeddings)


def attention_heads(module, q_gate_1TC, k_1TC, v_1TC, position_embeddings):
    """attention_qkv from the projections' outputs [1, T, ...] (of some of the heads: sequence parallelism's
    gather_scatter exchange projects its own, padfree.parallel.ulysses)."""
    T, D = q_gate_1TC.shape[1], module.head_dim
    q_1THD, gate_1THD = q_gate_1TC.view(1, T, -1, 2 * D).chunk(2, dim=-1)
    q_1THD = module.q_norm(q_1THD)
    k_1THD = module.k_norm(k_1TC.view(1, T, -1, D))
    v_1THD = v_1TC.view(1, T, -1, D)
    # The family's rotary formula (partial rotary) for the [1, T, H, D] layout: padfree's fused Triton kernels on
    # CUDA (same dtypes, constant cos/sin), else the family's own function (passed for that fallback).
    apply_rotary_pos_emb = sys.modules[type(module).__module__].apply_rotary_pos_emb
    cos, sin = position_embeddings
    q_1THD, k_1THD = apply_rotary(q_1THD, k_1THD, cos, sin, apply_rotary_pos_emb)
    device_type = q_gate_1TC.device.type
    if torch.is_autocast_enabled(device_type):
        # fp32 rotary tables promote q and k back to fp32 while v stays in the autocast dtype; SDPA
        # (upstream's attention) is on autocast's cast-down list, so casting all three matches it.
        dtype = torch.get_autocast_dtype(device_type)
        q_1THD, k_1THD, v_1THD = (t.to(dtype) for t in (q_1THD, k_1THD, v_1THD))
    return q_1THD, k_1THD, v_1THD, gate_1THD


def attention_output(module, o_THD: torch.Tensor, gate_1THD: torch.Tensor) -> torch.Tensor:
    o_1TC = o_THD.reshape(1, o_THD.shape[0], -1) * torch.sigmoid(gate_1THD.reshape(1, o_THD.shape[0], -1))
    return module.o_proj(o_1TC)


def attention_packed(
    module, hidden_1TC: torch.Tensor, position_embeddings, packed: PackedBatch, backend: str
) -> tuple[torch.Tensor, None]:
    """A Qwen3.5-family gated attention layer over a packed row; each document attends to itself only."""
    q_1THD, k_1THD, v_1THD, gate_1THD = attention_qkv(module, hidden_1TC, position_embeddings)
    o_THD = varlen_attention(
        q_1THD[0], k_1THD[0], v_1THD[0], packed.cu_seqlens, packed.max_seqlen,
        scale=module.scaling, backend=backend, cu_seqlens_host=packed.cu_seqlens_host,
        trust_offsets=packed.chunk_indices is not None,  # a fixed-shape row, validated before its buffers were filled
    )  # fmt: skip
    return attention_output(module, o_THD, gate_1THD), None
