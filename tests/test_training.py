"""Training on packed rows: the same loss curve as unpacked training, and the HF Trainer path."""

from __future__ import annotations

import copy

import torch

import padfree
from padfree.tiny import load_tiny_model
from tests.helpers import assert_close

LENGTHS = [37, 5, 61, 12, 1, 3, 90, 22, 48, 9, 70, 2, 15, 33, 64, 7] * 2


def make_docs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=gen) for n in LENGTHS]


def padded_batch(docs):
    width = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)], mask[row, : len(doc)] = doc, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def train(model, batches, steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for batch in batches[:steps]:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses)


def test_packed_training_follows_the_unpacked_loss_curve(tmp_path):
    """Upstream on right-padded batches of 4 documents vs padfree on the same 4 packed in one row.

    Both normalise by the same trained-token count, so the curves agree step for step; fp32
    rounding differences compound through AdamW over 16 steps, hence 1e-3 and not 1e-4.
    """
    upstream = load_tiny_model("qwen3_5", tmp_path).float()
    patched = padfree.patch(copy.deepcopy(upstream))
    docs = make_docs()
    groups = [docs[i : i + 4] for i in range(0, len(docs), 4)]
    packed = [padfree.collate([{"input_ids": d} for d in g]) for g in groups]
    assert all(b["cu_seq_lens_q"].numel() - 1 == 4 for b in packed)  # really 4 documents per row
    unpacked_curve = train(upstream, [padded_batch(g) for g in groups] * 2, steps=16)
    packed_curve = train(patched, packed * 2, steps=16)
    assert unpacked_curve[-4:].mean() < unpacked_curve[:4].mean() - 0.2  # it really trained (2 epochs)
    assert_close("loss curve", unpacked_curve, packed_curve, 1e-3, "fp32 noise compounding through AdamW")


def test_hf_trainer_trains_a_patched_model_on_collated_rows(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = padfree.patch(load_tiny_model("qwen3_5", tmp_path / "model"))
    docs_per_row = []

    def collator(samples):
        batch = padfree.collate(samples, pad_to_multiple_of=64)
        docs_per_row.append(batch["cu_seq_lens_q"].numel() - 1)
        return batch

    dataset = [{"input_ids": d.tolist()} for d in make_docs()]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, dataloader_drop_last=True,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert min(docs_per_row) >= 4  # each row packed 4 samples (plus the padding document)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert sum(losses[-3:]) < sum(losses[:3])
