"""padfree.cuda_graph's host side, on CPU: the fixed-shape row tables and every refusal.

The captured step itself needs CUDA and FLA (tests/gpu/test_cuda_graph.py). What can be proven here is
the metadata it copies in: the padded offsets and FLA's chunk table, against a per-token construction
written independently (every token's (document, token // 64) pair, in order, deduplicated).
"""

from __future__ import annotations

import random

import pytest
import torch

import padfree
from padfree.cuda_graph import CudaGraphTrainStep
from padfree.static_row import check_row, chunk_slots, chunk_table, padded_offsets, row_values
from padfree.ops.attention import varlen_attention
from padfree.ops.conv1d import causal_conv1d
from padfree.ops.gated_delta import chunk_gated_delta_rule
from padfree.tiny import load_tiny_model
from padfree.varlen import CHUNK


def _per_token_chunks(offsets: list[int]) -> list[tuple[int, int]]:
    seen = []
    for doc, (start, end) in enumerate(zip(offsets, offsets[1:])):
        for t in range(start, end):
            pair = (doc, (t - start) // CHUNK)
            if not seen or seen[-1] != pair:
                seen.append(pair)
    return seen


def _random_offsets(rng: random.Random, row_tokens: int, docs: int) -> list[int]:
    cuts = sorted(rng.sample(range(1, row_tokens), docs - 1))
    return [0, *cuts, row_tokens]


def test_chunk_table_matches_per_token_chunks_and_pads_with_the_empty_last_document():
    rng = random.Random(0)
    for row_tokens, max_docs in ((8192, 64), (300, 7), (64, 3), (65, 2)):
        slots = chunk_slots(row_tokens, max_docs)
        for docs in sorted({1, 2, max_docs, rng.randint(1, max_docs)}):
            offsets = _random_offsets(rng, row_tokens, docs)
            padded = padded_offsets(offsets, max_docs)
            assert len(padded) == max_docs + 2 and padded[: docs + 1] == offsets
            assert set(padded[docs + 1 :]) == {row_tokens}  # empty documents at the end, at least one
            table = chunk_table(padded, slots)
            real = _per_token_chunks(offsets)
            assert len(table) == slots and table[: len(real)] == real
            assert set(table[len(real) :]) <= {(max_docs, 0)}  # the last document, which is empty
            assert padded[max_docs] == padded[max_docs + 1]


def test_chunk_slots_fit_the_worst_row():
    # documents of 65 tokens waste the most: two chunks each
    for max_docs in (1, 5, 40):
        row_tokens = 65 * max_docs
        offsets = list(range(0, row_tokens + 1, 65))
        assert len(_per_token_chunks(offsets)) == 2 * max_docs
        chunk_table(padded_offsets(offsets, max_docs), chunk_slots(row_tokens, max_docs))  # does not raise


def _batch(lengths, pad_to):
    return padfree.collate([{"input_ids": torch.arange(1, n + 1)} for n in lengths], pad_to=pad_to)


def test_check_row_returns_the_offsets_and_refuses_bad_rows():
    batch = _batch([5, 3, 7], pad_to=20)
    assert check_row(batch, 20, max_docs=4) == [0, 5, 8, 15, 20]  # the collate's padding document counts
    with pytest.raises(ValueError, match="more than max_docs=3"):
        check_row(batch, 20, max_docs=3)
    with pytest.raises(ValueError, match=r"must both be \[1, 32\]"):
        check_row(batch, 32, max_docs=8)
    with pytest.raises(ValueError, match="no 'labels'"):
        check_row({k: v for k, v in batch.items() if k != "labels"}, 20, max_docs=8)
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k differ"):
        check_row(dict(batch, cu_seq_lens_k=torch.tensor([0, 5, 9, 15, 20])), 20, max_docs=8)
    with pytest.raises(ValueError, match="position_ids do not count"):
        check_row(dict(batch, position_ids=torch.arange(20)[None]), 20, max_docs=8)
    with pytest.raises(ValueError, match="strictly increasing"):
        check_row(dict(batch, cu_seq_lens_q=torch.tensor([0, 5, 5, 20]), cu_seq_lens_k=None), 20, max_docs=8)
    # the rule of every packed row (padfree.models.causal_lm): a padding mask is refused, an all-ones one is inert
    padding_mask = torch.ones(1, 20, dtype=torch.long)
    padding_mask[0, -3:] = 0
    with pytest.raises(ValueError, match="attention_mask with zeros"):
        check_row(dict(batch, attention_mask=padding_mask), 20, max_docs=8)
    assert check_row(dict(batch, attention_mask=torch.ones(1, 20)), 20, max_docs=4) == [0, 5, 8, 15, 20]


def test_padded_offsets_refuse_more_documents_than_slots():
    with pytest.raises(ValueError, match="holds 3 documents, more than max_docs=2"):
        padded_offsets([0, 1, 2, 3], 2)
    with pytest.raises(ValueError, match="end with an empty document"):
        chunk_table([0, 1, 2, 3], 10)


def test_ops_refuse_chunk_indices_off_fla_and_trusted_attention_off_flash():
    cu = torch.tensor([0, 3, 7, 7], dtype=torch.int32)
    table = torch.tensor([[0, 0], [1, 0], [2, 0]], dtype=torch.int32)
    x = torch.randn(1, 7, 4)
    with pytest.raises(ValueError, match=r"taken by backends \('fla', 'triton'\), but the backend here is 'torch'"):
        causal_conv1d(x, torch.randn(4, 3), cu_seqlens=cu, chunk_indices=table, backend="torch")
    q = k = torch.randn(1, 7, 2, 8)
    with pytest.raises(ValueError, match=r"taken by backends \('fla', 'triton'\), but the backend here is 'torch'"):
        chunk_gated_delta_rule(q, k, torch.randn(1, 7, 2, 8), -torch.rand(1, 7, 2), torch.rand(1, 7, 2),
                               cu_seqlens=cu, chunk_indices=table, backend="torch")  # fmt: skip
    with pytest.raises(ValueError, match="trust_offsets=True needs a flash backend"):
        varlen_attention(q[0], k[0], k[0], cu, 7, trust_offsets=True)


def test_graphed_step_refuses_what_it_cannot_capture(tmp_path):
    model = load_tiny_model("qwen3_5", tmp_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="not patched"):
        CudaGraphTrainStep(model, optimizer, row_tokens=64, max_docs=4)
    padfree.patch(model)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        CudaGraphTrainStep(model, optimizer, row_tokens=64, max_docs=4)
    moe = padfree.patch(load_tiny_model("qwen3_5_moe", tmp_path / "moe"))
    with pytest.raises(ValueError, match="covers dense models"):
        CudaGraphTrainStep(moe, torch.optim.AdamW(moe.parameters()), row_tokens=64, max_docs=4)


def test_sharded_row_values_are_each_ranks_slice_as_shard_batch_cuts_it():
    """A sequence-parallel rank's fixed-shape row holds the tokens and shifted targets shard_batch gives it (the
    eager sharded step, tested against the unsharded run in tests/parallel); the tables stay the whole row's."""
    from types import SimpleNamespace

    from padfree.parallel import shard_batch

    batch = _batch([5, 30, 7, 1, 21], pad_to=72)
    whole = row_values(batch, 72, max_docs=8)
    for degree in (2, 4, 8):
        shard = 72 // degree
        for rank in range(degree):
            local = shard_batch(batch, SimpleNamespace(size=degree, rank=rank))
            values = row_values(batch, 72, max_docs=8, rows=slice(rank * shard, (rank + 1) * shard))
            assert torch.equal(values["input_ids"], local["input_ids"])
            assert torch.equal(values["labels"], local["shift_labels"])
            assert torch.equal(values["cu_seqlens"], whole["cu_seqlens"])
            assert torch.equal(values["chunk_indices"], whole["chunk_indices"])
    # the last target of rank 0 at degree 2 is rank 1's first token: shifted before the cut
    first = row_values(batch, 72, 8, rows=slice(0, 36))["labels"][0, -1]
    assert first == batch["input_ids"][0, 36] != -100


def test_graphed_step_refuses_sequence_parallelism_it_cannot_replay(tmp_path, one_rank_group):
    from padfree.parallel import SequenceParallel

    refusals = {
        "context": "Ulysses only, but the attention and gdn layers were patched for context",
        "ulysses:functional": "needs collectives='c10d' or 'symmetric_memory', got 'functional'",
        "ulysses": "needs NCCL collectives, but the sequence-parallel group runs on 'gloo'",
    }
    for spec, message in refusals.items():
        model = padfree.patch(load_tiny_model("qwen3_5", tmp_path / spec.replace(":", "_")),
                              sequence_parallel=SequenceParallel.from_spec(one_rank_group, spec))  # fmt: skip
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
        with pytest.raises(ValueError, match=message):
            CudaGraphTrainStep(model, optimizer, row_tokens=64, max_docs=4)
