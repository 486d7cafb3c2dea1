"""bf16 mixed precision (fp32 weights, bf16 autocast), on CPU where CI runs it.

1. A packed row under bf16 autocast equals upstream run per document under the same autocast, up to
   bf16 rounding: both are compared with the fp32 per-document reference, and padfree's error may be
   at most 3x upstream's own (the same roundings, in another order; a leak between documents is 10x+).
2. `padfree train --dtype bf16-mixed` keeps what pure bf16 weights lose: an AdamW step of lr 1e-5 on
   weights of size ~0.02 is under bf16's rounding step, so pure bfloat16 training leaves most weights
   exactly where they were; fp32 master weights move every one of them.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import padfree
from padfree.cli import main
from padfree.train import TrainConfig
from padfree.train.model import build_demo_model, load_tokenizer
from tests.helpers import rms_relative_error
from tests.test_models import DOC_LENGTHS, make_docs


def _per_document_logits(model, docs, autocast: bool):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return torch.cat([model(input_ids=d[None]).logits[0].float() for d in docs])


def test_packed_under_bf16_autocast_matches_upstream_rounding(tiny_model):
    docs = make_docs(DOC_LENGTHS)
    reference = _per_document_logits(tiny_model, docs, autocast=False)  # fp32, unpatched
    upstream_bf16 = _per_document_logits(tiny_model, docs, autocast=True)
    padfree.patch(tiny_model)
    batch = padfree.collate([{"input_ids": d} for d in docs])
    batch.pop("labels")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        packed = tiny_model(**batch).logits[0].float()
    upstream_err = rms_relative_error(reference, upstream_bf16)
    padfree_err = rms_relative_error(reference, packed)
    assert upstream_err > 1e-4, "autocast must really have run in bf16"
    assert padfree_err <= 3 * upstream_err, (
        f"packed bf16-autocast error {padfree_err:.2e} vs upstream's own {upstream_err:.2e}: more than bf16 rounding"
    )


def test_packed_under_bf16_autocast_trains(tiny_model):
    padfree.patch(tiny_model)
    tiny_model.train()
    batch = padfree.collate([{"input_ids": d} for d in make_docs(DOC_LENGTHS)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tiny_model(**batch).loss
    loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _changed_fraction(run_dir, initial: dict) -> tuple[float, dict]:
    saved = load_file(run_dir / "checkpoint-2" / "model.safetensors")
    changed = [(saved[k].float() != initial[k]).float().mean() for k in saved if saved[k].dim() == 2]
    return float(torch.stack(changed).mean()), saved


@pytest.fixture(scope="module")
def initial_weights():
    model = build_demo_model(load_tokenizer(TrainConfig()), seed=0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_bf16_mixed_keeps_small_updates_that_pure_bf16_loses(tmp_path, initial_weights):
    common = ["--max-steps", "2", "--lr", "1e-5", "--warmup-steps", "1", "--max-tokens", "256", "--save-every", "0",
              "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    fractions, weights = {}, {}
    for dtype in ("float32", "bf16-mixed", "bfloat16"):
        assert main(["train", *common, "--dtype", dtype, "--output-dir", str(tmp_path / dtype)]) == 0
        fractions[dtype], weights[dtype] = _changed_fraction(tmp_path / dtype, initial_weights)
    # (weights of the pure-bf16 run are compared after rounding the initial ones to bf16 too)
    bf16_initial = {k: v.to(torch.bfloat16).float() for k, v in initial_weights.items()}
    fractions["bfloat16"], _ = _changed_fraction(tmp_path / "bfloat16", bf16_initial)
    assert weights["bf16-mixed"]["lm_head.weight"].dtype == torch.float32  # saved master weights
    # Every weight with a gradient moves (rows of tokens the 2 steps never saw get none: ~3%)...
    assert fractions["float32"] > 0.9 and abs(fractions["bf16-mixed"] - fractions["float32"]) < 0.01, fractions
    assert fractions["bfloat16"] < 0.5, fractions  # ...but pure bf16 rounds most updates away (14% move)
    moved = {k: (weights[d]["lm_head.weight"] - initial_weights["lm_head.weight"]) for k, d in
             (("fp32", "float32"), ("mixed", "bf16-mixed"))}  # fmt: skip
    assert rms_relative_error(moved["fp32"], moved["mixed"]) < 0.2  # the same steps, up to bf16 gradients
