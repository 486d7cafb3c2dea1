"""On CUDA with flash-linear-attention: the chunked loss with FLA's softmax kernels against F.cross_entropy.

Skipped without CUDA or FLA. The reference is `F.cross_entropy` on full fp32 logits of the same
(rounded) inputs. Checked: the summed loss, d(hidden), d(weight) and d(bias), with ignored targets,
several chunks and a tail, a frozen weight, an all-ignored input, and that "auto" really took FLA's
kernels (their chunk size differs from the torch path's, and the op does not run log_softmax).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from padfree.loss import DEFAULT_BUDGET_BYTES, chunk_rows_for_budget, chunked_linear_cross_entropy
from padfree.ops._backend import fla_available
from tests.helpers import assert_close, rms_relative_error

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and fla_available()), reason="needs CUDA and flash-linear-attention"
)
DEVICE = "cuda"
FP32_WHY = "fp32 inputs: the same formulas, only the summation order differs (errors ~1e-7)"
BF16_WHY = (
    "bf16 logits and gradients, each rounded once (<= 2^-9 relative): gradients bounded by 1.5x the error of "
    "the torch softmax path on the same bf16 inputs (+1e-6), the summed loss by 1e-4 as in tests/test_loss.py"
)


def _assert_bf16_close(ref_loss, ref_grads, loss, grads, torch_grads):
    """The loss within 1e-4; each gradient within 1.5x the torch path's own error (BF16_WHY)."""
    assert_close("loss", ref_loss, loss, 1e-4, BF16_WHY)
    for name, ref, got, baseline in zip(("dhidden", "dweight", "dbias"), ref_grads, grads, torch_grads):
        bound = 1.5 * rms_relative_error(ref * 0.37, baseline.float()) + 1e-6
        assert_close(name, ref * 0.37, got.float(), bound, BF16_WHY)


def _inputs(dtype, T=1000, H=256, V=50_000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=gen).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=gen) * 0.05).to(DEVICE, dtype).requires_grad_()
    bias = (torch.randn(V, generator=gen) * 0.1).to(DEVICE, dtype).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=gen).to(DEVICE)
    targets[::7] = -100
    return hidden, weight, bias, targets


def _reference(hidden, weight, bias, targets):
    leaves = [t.detach().float().requires_grad_() for t in (hidden, weight, bias)]
    loss = F.cross_entropy(F.linear(*leaves), targets, reduction="sum")
    return loss, torch.autograd.grad(loss, leaves)


def _chunked(hidden, weight, bias, targets, **kwargs):
    loss = chunked_linear_cross_entropy(hidden, weight, targets, bias_V=bias, **kwargs)
    # A non-unit upstream gradient checks that backward scales the precomputed gradients.
    return loss, torch.autograd.grad(loss * 0.37, (hidden, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_softmax_matches_full_fp32_logits(dtype):
    hidden, weight, bias, targets = _inputs(dtype)
    ref_loss, ref_grads = _reference(hidden, weight, bias, targets)
    loss, grads = _chunked(hidden, weight, bias, targets, chunk_size=256, softmax_backend="fla")  # 3 chunks + 232
    assert loss.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    if dtype == torch.float32:
        assert_close("loss", ref_loss, loss, 1e-5, FP32_WHY)
        for name, ref, got in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
            assert_close(name, ref * 0.37, got, 1e-5, FP32_WHY)
        return
    _, torch_grads = _chunked(hidden, weight, bias, targets, chunk_size=256, softmax_backend="torch")
    _assert_bf16_close(ref_loss, ref_grads, loss, grads, torch_grads)


def test_auto_takes_fla_on_cuda_with_its_own_chunk_size():
    """At the default budget "auto" sizes chunks for FLA (2 bytes a logit in bf16), not for the torch path's
    8, and the loss runs no log_softmax (FLA's kernel computes it)."""
    hidden, weight, bias, targets = _inputs(torch.bfloat16, T=9000, H=64, V=248_320)
    fla_rows = chunk_rows_for_budget(248_320, DEFAULT_BUDGET_BYTES, bytes_per_logit=2)
    assert fla_rows > 2 * chunk_rows_for_budget(248_320, DEFAULT_BUDGET_BYTES) and 9000 > 2 * fla_rows
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, grads = _chunked(hidden, weight, bias, targets)
    names = [event.name for event in prof.events()]
    assert not any("log_softmax" in name for name in names), "auto ran the torch softmax path on CUDA"
    assert names.count("aten::linear") == 3, "expected 3 FLA-sized chunks (logits by F.linear, one per chunk)"
    ref_loss, ref_grads = _reference(hidden, weight, bias, targets)
    _, torch_grads = _chunked(hidden, weight, bias, targets, softmax_backend="torch")
    _assert_bf16_close(ref_loss, ref_grads, loss, grads, torch_grads)


def test_fla_softmax_frozen_weight_and_all_ignored():
    hidden, weight, bias, targets = _inputs(torch.bfloat16, T=300)
    frozen = weight.detach()
    loss = chunked_linear_cross_entropy(hidden, frozen, targets, chunk_size=128, softmax_backend="fla")
    (d_hidden,) = torch.autograd.grad(loss, (hidden,))
    ref_loss, ref_grads = _reference(hidden, weight, torch.zeros_like(bias), targets)
    assert_close("loss (frozen weight)", ref_loss, loss, 1e-4, BF16_WHY)
    assert_close("dhidden (frozen weight)", ref_grads[0], d_hidden.float(), 1e-2, BF16_WHY)
    ignored = torch.full_like(targets, -100)
    loss, grads = _chunked(hidden, weight, bias, ignored, chunk_size=128, softmax_backend="fla")
    assert loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads), "grads must be exactly 0, not NaN or tiny"
