"""Diagnostic (tenth session): per-parameter gradients of one backward, the ordinary packed row vs the
CUDA-graph step's fixed-shape row (run eagerly, no graph, no optimizer), on `padfree train`'s demo
model and data (bf16-mixed). A repeat of the ordinary row gives the run-to-run floor.

    python benchmarks/gpu/diag_static_row_grads.py
"""

import torch

import padfree
from padfree.corpus import bundled_path
from padfree.static_row import StaticRow, fla_tensor_cache_off, static_row_loss
from padfree.loss import count_trained_tokens
from padfree.train.config import TrainConfig
from padfree.train.data import load_training_data
from padfree.train.model import load_tokenizer, prepare_model

config = TrainConfig(max_tokens=512, device="cuda", cache_dir="/tmp/diag-cache")
device = torch.device("cuda")
tokenizer = load_tokenizer(config)
data = bundled_path("chat_sample.jsonl")
stream = load_training_data(data, "train", tokenizer, "/tmp/diag-cache", 512, "truncate", 0).stream
model = prepare_model(config, tokenizer, device)
params = dict(model.named_parameters())


def grads(loss_fn):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        loss = loss_fn()
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in params.items() if p.grad is not None}


def diff(a, b):
    out = {n: ((a[n] - b[n]).norm() / max(b[n].norm(), 1e-30)).item() for n in b}
    return sorted(out.items(), key=lambda kv: -kv[1])[:6]


for position in range(4):
    row = stream.row(position)
    batch = padfree.collate(row, pad_to=512, pad_token_id=tokenizer.pad_token_id or 0)
    count = int(count_trained_tokens(batch["labels"]))
    lengths = [len(s["input_ids"]) for s in row]
    on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    l1, g1 = grads(lambda: model(**on_device, num_items_in_batch=count).loss)
    l2, g2 = grads(lambda: model(**on_device, num_items_in_batch=count).loss)
    static = StaticRow(512, len(lengths) + 4, device)
    static.fill(batch)
    num = torch.tensor(count, device=device)
    with fla_tensor_cache_off():
        l3, g3 = grads(lambda: static_row_loss(model, static, num))
    print(f"row {position}: documents {lengths}; loss {l1:.6f} / repeat {l2:.6f} / fixed-shape {l3:.6f}")
    print("  repeat vs first:     ", [(n, f"{v:.1e}") for n, v in diff(g2, g1)])
    print("  fixed-shape vs first:", [(n, f"{v:.1e}") for n, v in diff(g3, g1)])
