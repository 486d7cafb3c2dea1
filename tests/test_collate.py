"""padfree.collate: one packed row that a real tiny Qwen3.5 model accepts; no label crosses documents."""

from __future__ import annotations

import pytest
import torch

import padfree
from padfree.tiny import load_tiny_model


def samples(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 200, (n,), generator=gen)} for n in lengths]


def test_no_label_crosses_a_document():
    lengths = [4, 1, 7, 3]
    batch = padfree.collate(samples(lengths))
    cu = batch["cu_seq_lens_q"].tolist()
    assert len(cu) - 1 == len(lengths) > 1
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    for start, end in zip(cu, cu[1:]):
        assert labels[start] == -100  # never trained to predict the previous document's continuation
        assert torch.equal(labels[start + 1 : end], ids[start + 1 : end])
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert batch["max_length_q"] == batch["max_length_k"] == 7


def test_given_labels_are_kept_except_document_starts():
    batch = padfree.collate([{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["labels"].tolist() == [[-100, -100, 7, -100, 9]]


@pytest.mark.parametrize("kwargs, length", [({"pad_to": 32}, 32), ({"pad_to_multiple_of": 8}, 16)])
def test_padding_is_a_dummy_document(kwargs, length):
    batch = padfree.collate(samples([5, 6]), pad_token_id=0, **kwargs)
    assert batch["input_ids"].shape == (1, length)
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 11, length]
    assert (batch["labels"][0, 11:] == -100).all()
    assert batch["position_ids"][0, 11:].tolist() == list(range(length - 11))


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        ([], {}, "no samples"),
        ([{"input_ids": []}], {}, "sample 0 has no input_ids"),
        ([{"input_ids": [1, 2], "labels": [1]}], {}, "labels has 1 entries but input_ids has 2"),
        ([{"input_ids": [1, 2, 3]}], {"pad_to": 2}, "pad_to=2 is shorter"),
    ],
)
def test_bad_samples(bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        padfree.collate(bad, **kwargs)


def test_collated_row_is_accepted_by_a_real_model(tmp_path):
    """A real tiny Qwen3.5 takes the row as `model(**batch)`. Unpatched transformers refuses its
    cu_seq_lens on CPU (it needs FLA to keep them apart), so the row goes to a patched model."""
    model = padfree.patch(load_tiny_model("qwen3_5", tmp_path))
    batch = padfree.collate(samples([9, 2, 17]), pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="can't keep packed sequences apart"):
        padfree.unpatch(load_tiny_model("qwen3_5", tmp_path / "upstream"))(**batch)
    out = model(**batch)
    assert out.logits.shape == (1, 32, model.config.vocab_size)
    assert torch.isfinite(out.loss)
