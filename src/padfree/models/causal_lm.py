"""The top-level forward of a patched causal LM: decide whether a batch is packed, check it, run it.

The rule (documented in the README):
1. A batch that carries `cu_seq_lens_q` (as `padfree.collate` makes) is a packed row.
2. A batch of one row whose `position_ids` restart at 0 is a packed row too: position_ids are
   enough to find the documents, so it is converted rather than refused.
3. Several rows whose `position_ids` restart are refused: upstream would mix their documents.
4. Anything else is an ordinary batch and runs upstream's forward untouched.

A packed row is validated before any compute; then every layer receives the `PackedBatch` through
the `padfree_packed` keyword, which transformers forwards to each decoder layer's mixers.
"""

from __future__ import annotations

import inspect

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from padfree.loss import causal_lm_loss
from padfree.parallel.shard import sharded_row
from padfree.varlen import (
    PackedBatch, document_positions, packed_from_cu_seqlens, packed_from_position_ids, position_ids_restart,
)  # fmt: skip

PACKED_KWARG = "padfree_packed"
_NO_MASKS = {"full_attention": None, "linear_attention": None}  # skips upstream's O(T^2) mask building


def _find_packed(args: dict, total_len: int) -> PackedBatch | None:
    cu_q, cu_k = args.pop("cu_seq_lens_q", None), args.pop("cu_seq_lens_k", None)
    args.pop("max_length_q", None), args.pop("max_length_k", None)
    position_ids = args.get("position_ids")
    if cu_q is None and cu_k is None:
        if position_ids is None or position_ids.dim() != 2:
            return None
        if position_ids.shape[0] > 1:
            if bool((position_ids[:, 1:] == 0).any()):
                raise ValueError(
                    f"position_ids of a batch of {position_ids.shape[0]} rows restart at 0 inside a row: these are "
                    "packed rows, and padfree packs one row per batch. Collate each batch with padfree.collate."
                )
            return None
        return packed_from_position_ids(position_ids) if position_ids_restart(position_ids) else None
    cu = cu_q if cu_q is not None else cu_k
    # compared where cu_q lives: on a GPU one sync for the verdict, not one copy to the host per tensor
    if cu_q is not None and cu_k is not None and not torch.equal(cu_q, cu_k.to(cu_q.device)):
        raise ValueError("cu_seq_lens_q and cu_seq_lens_k differ; padfree packs self-attention rows, where they are equal.")
    return packed_from_cu_seqlens(cu, total_len)


def _check_packed_row(args: dict, packed: PackedBatch, batch_size: int, rows: slice = slice(None)) -> None:
    """Refuse what a packed row cannot hold; fill in position_ids when absent. `packed` is on the row's device."""
    if batch_size != 1:
        raise ValueError(
            f"a packed row must have batch size 1, got {batch_size}; padfree.collate packs a batch into one row."
        )
    mask = args.get("attention_mask")
    if isinstance(mask, torch.Tensor) and not bool(mask.all()):
        raise ValueError(
            "a packed row got an attention_mask with zeros; document boundaries come from cu_seq_lens, and padding "
            "is a dummy document (padfree.collate(pad_to=...)). Drop attention_mask."
        )
    if args.get("cache") is not None or args.get("past_key_values") is not None:
        raise ValueError("a packed row cannot use a cache (it holds several documents); generate per document.")
    position_ids = args.get("position_ids")
    expected = document_positions(packed.cu_seqlens, packed.total_len).unsqueeze(0)[:, rows]
    if position_ids is None:
        args["position_ids"] = expected
    elif position_ids.shape != expected.shape or not bool((position_ids == expected).all()):
        raise ValueError(
            "position_ids do not count 0, 1, 2, ... inside each document given by cu_seq_lens_q; build both with "
            "padfree.collate, or pass only one of them."
        )


def packed_causal_lm_forward(model, original_forward, fused_loss: bool, loss_kernels: dict, sp, *args, **kwargs):
    """`forward` of a patched causal LM; see the module docstring for the packed-row rule.
    `loss_kernels`: compile_backend= and softmax_backend= of the fused loss's chunks (padfree.loss)."""
    bound = inspect.signature(original_forward).bind_partial(*args, **kwargs)
    call = dict(bound.arguments)
    call.update(call.pop("kwargs", {}))
    reference = call.get("input_ids") if call.get("input_ids") is not None else call.get("inputs_embeds")
    if sp is not None:
        return _sharded_forward(model, sp, fused_loss, loss_kernels, call, reference)
    if reference is None:
        return original_forward(*args, **kwargs)
    packed = _find_packed(call, total_len=reference.shape[1])
    if packed is None:
        return original_forward(*args, **kwargs)
    packed = packed.to(reference.device)
    _check_packed_row(call, packed, reference.shape[0])
    call.update(attention_mask=dict(_NO_MASKS), use_cache=False)
    call[PACKED_KWARG] = packed

    labels = call.get("labels")
    wants_aux_loss = getattr(model.config, "output_router_logits", False)
    if labels is None or not (fused_loss and model.training) or wants_aux_loss or not hasattr(model, "lm_head"):
        return original_forward(**call)
    # Training step with labels: never materialise [T, vocab] logits (see padfree.loss).
    call.pop("labels")
    num_items_in_batch = call.pop("num_items_in_batch", None)
    call.pop("logits_to_keep", None)
    outputs = model.model(**call)
    loss = causal_lm_loss(
        outputs.last_hidden_state, model.lm_head.weight, labels, num_items_in_batch, lm_head_bias=model.lm_head.bias,
        **loss_kernels,
    )
    return CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=outputs.hidden_states)


def _sharded_forward(model, sp, fused_loss: bool, loss_kernels: dict, call: dict, reference: torch.Tensor | None):
    """A sequence-parallel rank's slice of a packed row (from padfree.parallel.shard_batch)."""
    if reference is None or "cu_seq_lens_q" not in call:
        raise ValueError(
            "this model is patched for sequence parallelism: pass each rank's slice of a packed row from "
            "padfree.parallel.shard_batch(padfree.collate(samples), sp)."
        )
    if call.get("labels") is not None:
        raise ValueError(
            "with sequence parallelism pass shift_labels (shard_batch shifts labels before splitting the row), "
            "not labels: a rank cannot shift across its boundary."
        )
    packed = _find_packed(call, total_len=reference.shape[1] * sp.size)
    packed = packed.to(reference.device)
    row = sharded_row(sp, packed)
    _check_packed_row(call, packed, reference.shape[0], rows=slice(row.start, row.end))
    call.update(attention_mask=dict(_NO_MASKS), use_cache=False)
    call[PACKED_KWARG] = row
    targets = call.pop("shift_labels", None)
    num_items_in_batch = call.pop("num_items_in_batch", None)
    call.pop("logits_to_keep", None)
    outputs = model.model(**call)
    hidden = outputs.last_hidden_state
    fused = targets is not None and fused_loss and model.training  # then no [T, vocab] logits, as unsharded
    loss = None
    if targets is not None:
        if num_items_in_batch is None:  # the whole row's count: every rank divides by the same number
            num_items_in_batch = (targets != -100).sum()
            torch.distributed.all_reduce(num_items_in_batch, group=sp.group)
        loss = causal_lm_loss(hidden, model.lm_head.weight, None, num_items_in_batch,
                              lm_head_bias=model.lm_head.bias, shift_labels_BT=targets,
                              **loss_kernels)  # fmt: skip
    logits = None if fused else model.lm_head(hidden)
    return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
