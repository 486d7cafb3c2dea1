"""A patched model on one packed row == the unpatched upstream model run on each document alone.

Reference: transformers' own unpatched model, document by document (no padding, no packing).
Bound: 1e-4 RMS-relative in fp32. The two sides differ only in summation order (the packed row's
chunked recurrence and varlen attention vs upstream's per-document kernels): ~1e-6 is typical, and
mixing documents shows up as errors of order 1e-1 (asserted below), so 1e-4 separates them clearly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import padfree
from tests.helpers import assert_close, rms_relative_error

FP32_BOUND = 1e-4
WHY = "fp32 packed vs per-document upstream: only summation order differs."
# A 1-token document, documents shorter than the conv width (4), and boundaries off the 64-token chunk edges.
DOC_LENGTHS = [5, 1, 3, 70, 2, 19]


def make_docs(lengths, vocab=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]


def per_document_reference(model, docs):
    """Upstream logits per document, concatenated, and the summed-CE loss / trained tokens, with grads."""
    model.zero_grad(set_to_none=True)
    logits, loss_sum, trained = [], 0.0, sum(len(d) - 1 for d in docs)
    for doc in docs:
        out = model(input_ids=doc[None])
        logits.append(out.logits[0].detach())
        if len(doc) > 1:
            loss_sum = loss_sum + F.cross_entropy(out.logits[0, :-1].float(), doc[1:], reduction="sum")
    loss = loss_sum / trained
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.cat(logits), loss.detach(), grads


def test_packed_row_equals_per_document_runs(tiny_model):
    docs = make_docs(DOC_LENGTHS)
    batch = padfree.collate([{"input_ids": d} for d in docs])
    assert batch["cu_seq_lens_q"].numel() - 1 == len(DOC_LENGTHS) > 1  # really several documents
    ref_logits, ref_loss, ref_grads = per_document_reference(tiny_model, docs)

    padfree.patch(tiny_model)
    with torch.no_grad():
        packed_logits = tiny_model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    assert_close("logits", ref_logits, packed_logits, FP32_BOUND, WHY)

    tiny_model.train()  # the fused chunked loss runs in training mode
    tiny_model.zero_grad(set_to_none=True)
    out = tiny_model(**batch)
    assert out.logits is None  # the [T, vocab] logits were never built
    out.loss.backward()
    assert_close("loss", ref_loss, out.loss.detach(), FP32_BOUND, WHY)
    names = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert set(ref_grads) == set(names)
    for name in names:
        assert_close(f"grad {name}", ref_grads[name], tiny_model.get_parameter(name).grad, FP32_BOUND, WHY)


def test_unpatched_model_mixes_or_refuses_packed_rows(tiny_model):
    """Without the patch (and without FLA): position_ids alone mix documents; cu_seq_lens are refused."""
    docs = make_docs(DOC_LENGTHS)
    batch = padfree.collate([{"input_ids": d} for d in docs])
    ref_logits, _, _ = per_document_reference(tiny_model, docs)
    with torch.no_grad():
        mixed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        assert rms_relative_error(ref_logits, mixed) > 100 * FP32_BOUND
        with pytest.raises(ValueError, match="can't keep packed sequences apart"):
            tiny_model(**{k: v for k, v in batch.items() if k != "labels"})


def test_position_ids_alone_are_converted(tiny_model):
    docs = make_docs([4, 9, 1, 30])
    batch = padfree.collate([{"input_ids": d} for d in docs])
    padfree.patch(tiny_model)
    with torch.no_grad():
        full = tiny_model(input_ids=batch["input_ids"], cu_seq_lens_q=batch["cu_seq_lens_q"]).logits
        from_positions = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert_close("logits", full, from_positions, 1e-6, "same documents found from position_ids")


def test_unpacked_batches_and_unpatch_are_exactly_upstream(tiny_model):
    docs = make_docs([12, 12])
    ids = torch.stack(docs)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a right-padded batch
    row = padfree.collate([{"input_ids": d} for d in make_docs([5, 7, 3])])
    packed = {"input_ids": row["input_ids"], "position_ids": row["position_ids"]}  # upstream mixes these
    with torch.no_grad():
        upstream = tiny_model(input_ids=ids, attention_mask=mask).logits
        upstream_packed = tiny_model(**packed).logits
        padfree.patch(tiny_model)
        assert padfree.is_patched(tiny_model)
        assert torch.equal(tiny_model(input_ids=ids, attention_mask=mask).logits, upstream)
        assert not torch.equal(tiny_model(**packed).logits, upstream_packed)  # the patch is active
        padfree.unpatch(tiny_model)
        assert not padfree.is_patched(tiny_model)
        assert "forward" not in vars(tiny_model)
        assert torch.equal(tiny_model(**packed).logits, upstream_packed)


def test_patch_is_idempotent(tiny_model):
    docs = make_docs([6, 20])
    batch = padfree.collate([{"input_ids": d} for d in docs])
    batch.pop("labels")
    padfree.patch(tiny_model)
    with torch.no_grad():
        once = tiny_model(**batch).logits
        padfree.patch(padfree.patch(tiny_model))
        assert torch.equal(tiny_model(**batch).logits, once)


def test_unsupported_model_raises_type_error(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        padfree.patch(model)
