"""One rank of the sequence-parallel equivalence runs (spawned by test_sequence_parallel.py).

For every scenario, family and mode: the loss and every parameter gradient of the sharded run
(gradients summed over ranks) against the same model run unsharded on the same packed row on this
rank. Rank 0 writes {name: {"loss": rel error, "grad": worst rel error, "param": its name}}; for
context parallelism also "summary_passes": each rank's count of state-summary passes (the extra
gated-delta pass over its last piece) and "gdn_layers".
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
import torch.distributed as dist

import padfree
import padfree.parallel.context as context
import padfree.parallel.ulysses as ulysses
from padfree.checkpointing import enable_checkpointing
from padfree.loss import count_trained_tokens
from padfree.parallel import SequenceParallel, gather_sequence, reduce_gradients, shard_batch
from padfree.parallel.grad_reduce import OverlappedGradReduce
from padfree.tiny import FAMILIES, load_tiny_model

# Scenario name -> document lengths. Shard length = ceil(T / P); the comments are for P = 4.
SCENARIOS = {
    2: {
        "document_cut_across_rank_boundary": [5, 9, 6],
        "one_token_documents": [1, 6, 1, 1, 3, 1, 2],
        "one_document_odd_length": [13],
    },
    4: {
        "document_spans_three_ranks": [2, 15, 11],  # shard 7: the second document covers ranks 0, 1, 2
        "rank_holding_only_padding": [4, 5],  # 9 tokens -> 12: rank 3 holds 3 padding tokens
        "one_token_documents": [1, 6, 1, 1, 3, 1, 2, 1],
        "conv_halo_wider_than_shard": [8],  # shard 2 < conv width - 1 = 3: the halo spans 2 ranks
    },
    8: {  # above every head count of the tiny models (4 query / 2 KV / 4 value / 2 key heads)
        "document_spans_all_ranks_with_one_token_shards": [1, 6, 1],  # 8 tokens: one per rank
        "documents_cut_and_padding": [5, 9, 6, 3],  # 23 tokens -> 24, shard 3
    },
}
# Ulysses cannot run at 8 on the tiny models' heads; context parallelism runs at any degree. At 2 ranks both
# also run on PyTorch's functional collectives (SequenceParallel(collectives="functional")), not the default c10d.
# Ulysses' GDN layers of the tiny Qwen3.5 all-gather their inputs at 2 ranks and all-to-all their projections
# at 4 by default (gdn_exchange="auto": P * hidden < C); each degree also runs the other way, and the
# all-gather with the reduce-scatter of out_proj's shares ("gather_scatter", which "auto" takes where
# P * hidden <= HV * V: not on the tiny model, whose hidden equals HV * V); the "gather_scatter" modes below
# run it in the attention layers too (attention_exchange, the fourth field; "auto" takes it where
# P * hidden <= heads * head_dim, again not on the tiny model).
MODES = {2: ("ulysses", "ulysses:functional", "ulysses::projections", "ulysses::gather_scatter:gather_scatter",
             "ulysses:functional:gather_scatter:gather_scatter", "context", "context:functional"),
         4: ("ulysses", "ulysses::inputs", "ulysses::gather_scatter:gather_scatter", "context"),
         8: ("context",)}  # fmt: skip
FEW_HEADS = dict(num_attention_heads=2, num_key_value_heads=1, linear_num_key_heads=1, linear_num_value_heads=2)


SUMMARY_PASSES = [0]
# Ulysses GDN layer calls on this rank, by what they exchanged; "strided_conv_input": "inputs" calls whose
# mixed_qkv (the conv's input) is not contiguous, which would make the conv copy it; "gather_scatter": calls
# that also reduce-scattered their output (they count as "inputs" too)
GDN_EXCHANGES = {"inputs": 0, "projections": 0, "gather_scatter": 0, "strided_conv_input": 0}
# Ulysses attention layer calls on this rank that took attention_exchange "gather_scatter"
ATTENTION_GATHER_SCATTER = [0]


def _count_gdn_exchanges():
    """Count Ulysses' GDN exchanges by kind (GDN_EXCHANGES): the tests check each mode took the path it names."""
    for kind, name in (
        ("inputs", "_gdn_row_from_inputs"), ("projections", "_gdn_send_buffer"),
        ("gather_scatter", "_gdn_scattered_output"),
    ):  # fmt: skip
        real = getattr(ulysses, name)

        def counted(*args, _real=real, _kind=kind, **kwargs):
            GDN_EXCHANGES[_kind] += 1
            out = _real(*args, **kwargs)
            if _kind == "inputs":
                GDN_EXCHANGES["strided_conv_input"] += not out[0].is_contiguous()
            return out

        setattr(ulysses, name, counted)
    real_attention = ulysses._attention_gather_scatter

    def counted_attention(*args, **kwargs):
        ATTENTION_GATHER_SCATTER[0] += 1
        return real_attention(*args, **kwargs)

    ulysses._attention_gather_scatter = counted_attention


def _count_summary_passes():
    """Count the calls of context parallelism's state-summary pass on this rank (SUMMARY_PASSES)."""
    real = context._last_piece_summary

    def counted(*args, **kwargs):
        SUMMARY_PASSES[0] += 1
        return real(*args, **kwargs)

    context._last_piece_summary = counted


def _samples(lengths, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (n,), generator=g)} for n in lengths]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(ref, out):
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))


def _compare(model, batch, sp):
    """(loss rel error, worst grad rel error, its parameter) of the sharded run vs the unsharded one."""
    model.zero_grad(set_to_none=True)
    padfree.patch(model, backend="torch", attention_backend="sdpa_per_doc")
    ref_loss = model(**batch).loss
    ref_loss.backward()
    ref_grads = _grads(model)

    model.zero_grad(set_to_none=True)
    padfree.patch(model, backend="torch", attention_backend="sdpa_per_doc", sequence_parallel=sp)
    local = shard_batch(batch, sp)
    trained = count_trained_tokens(batch["labels"])
    loss = model(**local, num_items_in_batch=trained).loss
    loss.backward()
    reduce_gradients(model, sp.group)
    total = loss.detach().clone()
    dist.all_reduce(total, group=sp.group)
    worst = max(((_rel(ref_grads[n], g), n) for n, g in _grads(model).items()), default=(0.0, "-"))
    assert set(_grads(model)) == set(ref_grads), "the sharded run must reach every parameter the full run does"
    return _rel(ref_loss.detach(), total), worst[0], worst[1]


def _check_gather(sp, results):
    """gather_sequence returns the unsharded row; its backward sums every rank's use of each slice."""
    T = 11
    full = torch.arange(T, dtype=torch.float32)[None, :, None] * torch.ones(1, 1, 3)
    shard = -(-T // sp.size)
    local = torch.nn.functional.pad(full, (0, 0, 0, shard * sp.size - T))[:, sp.rank * shard : (sp.rank + 1) * shard]
    local = local.clone().requires_grad_()
    gathered = gather_sequence(local, sp, total_len=T)
    weights = torch.linspace(0.5, 2.0, T)[None, :, None]
    (gathered * weights).sum().backward()
    padded_w = torch.nn.functional.pad(weights.expand(1, T, 3), (0, 0, 0, shard * sp.size - T))
    expected_grad = sp.size * padded_w[:, sp.rank * shard : (sp.rank + 1) * shard]
    ok = torch.equal(gathered.detach(), full) and torch.allclose(local.grad, expected_grad)
    results["gather_sequence"] = {"ok": bool(ok)}


def _check_overlapped_reduce(model, sp):
    """OverlappedGradReduce (the captured step's gradient sum) against the unsharded model: one row, then two rows
    accumulated into one set of gradients (prescale before the second), each compared with the unsharded run's
    gradient of the same loss. Small buckets, so several all-reduces run during the backward."""
    rows = [padfree.collate(_samples(lengths, model.config.vocab_size, seed=20 + i))
            for i, lengths in enumerate(([5, 9, 6], [3, 1, 12, 4]))]  # fmt: skip
    trained = [int(count_trained_tokens(row["labels"])) for row in rows]
    worst = {}
    for name, used in (("one_row", rows[:1]), ("two_rows_accumulated", rows)):
        count = sum(trained[: len(used)])
        model.zero_grad(set_to_none=True)
        padfree.patch(model, backend="torch", attention_backend="sdpa_per_doc")
        for row in used:
            model(**row, num_items_in_batch=count).loss.backward()
        ref_grads = _grads(model)
        padfree.patch(model, backend="torch", attention_backend="sdpa_per_doc", sequence_parallel=sp)
        reduce = OverlappedGradReduce(model.parameters(), sp.group, bucket_mb=0.05)
        reduce.zero_()
        launched = []
        for i, row in enumerate(used):
            if i:
                reduce.prescale()
            reduce.arm()
            model(**shard_batch(row, sp), num_items_in_batch=count).loss.backward()
            launched.append(reduce.launched_during_backward)
            reduce.finish()
        in_buffers = all(
            any(b.data_ptr() <= p.grad.data_ptr() < b.data_ptr() + b.numel() * b.element_size() for b in reduce.buffers)
            for p in model.parameters()
        )
        errors = [(_rel(ref_grads[n], g), n) for n, g in _grads(model).items()]
        reduce.remove()
        worst[name] = {
            "grad": max(errors)[0], "param": max(errors)[1], "params": len(errors), "reference_params": len(ref_grads),
            "buckets": len(reduce.buckets), "launched_during_backward": launched, "grads_in_buffers": in_buffers,
            "documents": [int(row["cu_seq_lens_q"].numel() - 1) for row in used],
        }  # fmt: skip
    return worst


def run(rank: int, world: int, init_file: str, out_file: str):
    torch.set_num_threads(1)
    # Models first: save_pretrained writes only on rank 0 once torch.distributed is initialised.
    with tempfile.TemporaryDirectory() as tmp:
        models = {family: load_tiny_model(family, os.path.join(tmp, family)).train() for family in FAMILIES}
        few_heads = load_tiny_model("qwen3_5", os.path.join(tmp, "few"), **FEW_HEADS).train()
        checkpointed_model = load_tiny_model("qwen3_5", os.path.join(tmp, "ckpt")).train() if world == 2 else None
        overlap_model = load_tiny_model("qwen3_5", os.path.join(tmp, "overlap")).train() if world == 2 else None
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    _count_summary_passes()
    _count_gdn_exchanges()
    try:
        sp = SequenceParallel(dist.group.WORLD)
        results = {}
        _check_gather(sp, results)
        for family, model in models.items():
            for scenario, lengths in SCENARIOS[world].items():
                batch = padfree.collate(_samples(lengths, model.config.vocab_size, seed=len(lengths)))
                for mode in MODES[world]:
                    sp_mode = SequenceParallel.from_spec(dist.group.WORLD, mode)
                    SUMMARY_PASSES[0] = 0
                    GDN_EXCHANGES.update(inputs=0, projections=0, gather_scatter=0, strided_conv_input=0)
                    ATTENTION_GATHER_SCATTER[0] = 0
                    loss_err, grad_err, where = _compare(model, batch, sp_mode)
                    result = {"loss": loss_err, "grad": grad_err, "param": where, "gdn_exchanges": dict(GDN_EXCHANGES),
                              "attention_gather_scatter": ATTENTION_GATHER_SCATTER[0]}  # fmt: skip
                    if mode == "context":
                        passes = [None] * world
                        dist.all_gather_object(passes, SUMMARY_PASSES[0])
                        gdn_layers = model.config.layer_types.count("linear_attention")
                        result.update(summary_passes=passes, gdn_layers=gdn_layers)
                    results[f"{family}/{mode}/{scenario}"] = result
        model = models["qwen3_5"]
        batch = padfree.collate(_samples([5, 9, 6], model.config.vocab_size, seed=1))
        try:
            model(**batch)
            refused = "no error"
        except ValueError as error:
            refused = str(error)
        results["unsharded_batch_refused"] = {"message": refused}
        if world == 4:  # heads below the degree: Ulysses cannot run, "auto" must pick context
            model = few_heads
            batch = padfree.collate(_samples([2, 15, 11], model.config.vocab_size, seed=7))
            auto = SequenceParallel(dist.group.WORLD, mode="auto")
            loss_err, grad_err, where = _compare(model, batch, auto)
            modes = auto.resolved_for(model.config).layer_modes
            results["qwen3_5/auto_above_head_counts/document_spans_three_ranks"] = {
                "loss": loss_err, "grad": grad_err, "param": where, "modes": modes,
            }  # fmt: skip
        if world == 2:  # activation checkpointing re-runs layers whose collectives cross ranks
            enable_checkpointing(checkpointed_model)
            checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in checkpointed_model.modules())
            batch = padfree.collate(_samples([5, 9, 6], checkpointed_model.config.vocab_size, seed=3))
            for mode in MODES[world]:
                sp_mode = SequenceParallel.from_spec(dist.group.WORLD, mode)
                loss_err, grad_err, where = _compare(checkpointed_model, batch, sp_mode)
                results[f"qwen3_5/{mode}/activation_checkpointing"] = {
                    "loss": loss_err, "grad": grad_err, "param": where, "checkpointed": checkpointed,
                }  # fmt: skip
        if world == 2:
            results["qwen3_5/ulysses/overlapped_grad_reduce"] = _check_overlapped_reduce(overlap_model, sp)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()
