"""On CUDA, with inductor: the compiled pieces of `compile_elementwise` against eager references.

Skipped without CUDA. `padfree bench`'s gate compares logits, which the compiled loss never touches,
so the loss and the gradients are checked here: the chunked loss with its per-chunk softmax gradient
compiled, bf16, against `F.cross_entropy` on full fp32 logits; and a patched tiny model, bf16, with
compile_elementwise and without it, each against the fp32 model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import padfree
from padfree.loss import chunked_linear_cross_entropy
from padfree.tiny import load_tiny_model
from tests.helpers import assert_close, rms_relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICE = "cuda"
BF16_WHY = "bf16 logits and gradients, each rounded once (<= 2^-9 relative), as in the CPU bf16 tests"


def test_compiled_chunked_loss_matches_full_fp32_logits():
    gen = torch.Generator().manual_seed(0)
    T, H, V = 1000, 256, 50_000  # 4 chunks of 256 rows and a tail of 232: two compiled shapes
    hidden = torch.randn(T, H, generator=gen).to(DEVICE, torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) * 0.05).to(DEVICE, torch.bfloat16).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=gen).to(DEVICE)
    targets[::7] = -100
    loss = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=256, compile_backend="inductor")
    grads = torch.autograd.grad(loss, (hidden, weight))
    leaves = [t.detach().float().requires_grad_() for t in (hidden, weight)]
    ref_loss = F.cross_entropy(leaves[0] @ leaves[1].T, targets, reduction="sum")
    ref_grads = torch.autograd.grad(ref_loss, leaves)
    assert_close("loss", ref_loss, loss, 1e-4, BF16_WHY)
    for name, ref, got in zip(("dhidden", "dweight"), ref_grads, grads):
        assert_close(name, ref, got.float(), 1e-2, BF16_WHY)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.float().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next"])
def test_compiled_model_is_as_close_to_fp32_as_the_eager_model(tmp_path, family):
    """bf16 with and without compile_elementwise, each against the fp32 eager patched model: fusing moves
    roundings around, so the compiled run may differ from the eager one, but not be further from fp32."""
    gen = torch.Generator().manual_seed(0)
    lengths = [70, 1, 17, 130, 3]
    batch = padfree.collate([{"input_ids": torch.randint(0, 256, (n,), generator=gen)} for n in lengths])
    batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    assert len(batch["cu_seq_lens_q"]) - 1 == len(lengths)
    reference_model = padfree.patch(load_tiny_model(family, tmp_path).to(DEVICE).train(), elementwise_backend="torch")
    reference = _loss_and_grads(reference_model, batch)
    model = load_tiny_model(family, tmp_path).to(DEVICE, torch.bfloat16).train()
    padfree.patch(model, elementwise_backend="torch")  # upstream's eager norms: what compiling replaces
    eager = _loss_and_grads(model, batch)
    padfree.patch(model, compile_elementwise=True)
    compiled = _loss_and_grads(model, batch)
    for i, name in enumerate(("loss", "gradients")):
        eager_error = rms_relative_error(reference[i], eager[i])
        bound = 1.5 * eager_error + 1e-3
        why = f"1.5 x the eager bf16 run's own error vs fp32 ({eager_error:.2e}) + 1e-3"
        assert_close(name, reference[i], compiled[i], bound, why)
