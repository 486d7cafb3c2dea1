"""A patched model refuses packed input it cannot keep apart, before any compute, saying what to change."""

from __future__ import annotations

import pytest
import torch

import padfree
from padfree.tiny import load_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return padfree.patch(load_tiny_model("qwen3_5", tmp_path_factory.mktemp("m")))


@pytest.fixture
def batch():
    out = padfree.collate([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}])
    out.pop("labels")
    return out


def _no_compute(model, monkeypatch):
    """Fail the test if the model's embedding runs: errors must come before any compute."""
    def boom(*args, **kwargs):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(model.model.embed_tokens, "forward", boom)


def test_padding_mask_on_packed_row(model, batch, monkeypatch):
    _no_compute(model, monkeypatch)
    mask = torch.ones_like(batch["input_ids"])
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="attention_mask with zeros"):
        model(**batch, attention_mask=mask)


def test_cu_seqlens_not_ending_at_row_length(model, batch, monkeypatch):
    _no_compute(model, monkeypatch)
    batch["cu_seq_lens_q"] = torch.tensor([0, 4, 5], dtype=torch.int32)
    batch["cu_seq_lens_k"] = batch["cu_seq_lens_q"]
    with pytest.raises(ValueError, match="ends at 5 but the row has 6 tokens"):
        model(**batch)


def test_cu_seqlens_q_and_k_that_differ(model, batch, monkeypatch):
    _no_compute(model, monkeypatch)
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 6]
    batch["cu_seq_lens_k"] = torch.tensor([0, 3, 6], dtype=torch.int32)  # a valid row, other boundaries
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k differ"):
        model(**batch)


def test_several_packed_rows(model, monkeypatch):
    _no_compute(model, monkeypatch)
    ids = torch.randint(3, 100, (2, 6))
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    with pytest.raises(ValueError, match="padfree packs one row per batch"):
        model(input_ids=ids, position_ids=positions)


def test_position_ids_disagree_with_cu_seqlens(model, batch, monkeypatch):
    _no_compute(model, monkeypatch)
    batch["position_ids"] = torch.arange(6)[None]
    with pytest.raises(ValueError, match="position_ids do not count"):
        model(**batch)


def test_malformed_position_ids(model, monkeypatch):
    _no_compute(model, monkeypatch)
    with pytest.raises(ValueError, match="jump from 1 to 3"):
        model(input_ids=torch.randint(3, 100, (1, 5)), position_ids=torch.tensor([[0, 1, 3, 0, 1]]))

