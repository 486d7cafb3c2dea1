"""The text model inside Qwen3.5(-MoE)ForConditionalGeneration: patched, a packed text row equals
the unpatched model run on each document alone (same fp32 bound and reason as tests/test_models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

import padfree
from padfree.tiny import _realistic_gates, tiny_config
from tests.helpers import assert_close
from tests.test_models import FP32_BOUND, WHY, make_docs

VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
              temporal_patch_size=2, spatial_merge_size=2)


@pytest.mark.parametrize(
    "family, config_class, model_class",
    [
        ("qwen3_5", "Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
        ("qwen3_5_moe", "Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
    ],
)
def test_conditional_generation_text_rows(family, config_class, model_class, tmp_path):
    config = getattr(transformers, config_class)(text_config=tiny_config(family).to_dict(), vision_config=VISION)
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config)
    _realistic_gates(model)
    model.save_pretrained(tmp_path)
    model = getattr(transformers, model_class).from_pretrained(tmp_path, dtype=torch.float32).eval()
    docs = make_docs([5, 1, 3, 70])
    with torch.no_grad():
        per_doc = [model(input_ids=d[None]).logits[0] for d in docs]
    ref_loss = sum(F.cross_entropy(l[:-1], d[1:], reduction="sum") for l, d in zip(per_doc, docs)) / sum(
        len(d) - 1 for d in docs
    )
    batch = padfree.collate([{"input_ids": d} for d in docs])
    assert batch["cu_seq_lens_q"].numel() - 1 == len(docs)
    padfree.patch(model)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        model.train()
        loss = model(**batch).loss
    assert_close("logits", torch.cat(per_doc), packed, FP32_BOUND, WHY)
    assert_close("loss", ref_loss, loss, FP32_BOUND, WHY)
