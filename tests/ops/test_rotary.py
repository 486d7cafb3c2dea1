"""Partial rotary embedding (padfree.ops.rotary) against transformers' own `apply_rotary_pos_emb`.

On CPU the dispatcher must hand everything to upstream (bit-for-bit). The Triton kernels themselves run here
only under Triton's interpreter (TRITON_INTERPRET=1 with Triton importable; CI has neither, so skipped there).

Legend: T tokens, H heads, HKV key heads, D head dim, R rotary dim.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

from padfree.ops import rotary
from tests.helpers import assert_close

FP32 = 1e-6
FP32_WHY = (
    "fp32 from the same values: the kernels compute upstream's products and sums (at most a fused multiply-add "
    "in another rounding), so only a few ulps of 2^-24 may differ."
)
CASES = {  # T, H, HKV, D, R
    "partial_like_0.8b": (37, 4, 2, 64, 16),  # R < D, D - R not a power of two
    "full_rotary": (9, 3, 1, 32, 32),  # R == D
    "odd_sizes": (5, 2, 2, 24, 6),  # D not a power of two, h = R/2 odd
}


def _inputs(T, H, HKV, D, R, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, D, generator=g).to(dtype)
    k = torch.randn(1, T, HKV, D, generator=g).to(dtype)
    angle = torch.randn(1, T, R, generator=g) * 3  # not cat(freqs, freqs): both halves differ, as the math allows
    return q, k, angle.cos().to(dtype), angle.sin().to(dtype)


def _forward_backward(fn, q, k, cos, sin, seed=1):
    q, k = (t.detach().clone().requires_grad_() for t in (q, k))
    q_embed, k_embed = fn(q, k, cos, sin)
    g = torch.Generator().manual_seed(seed)
    dq_embed, dk_embed = (torch.randn(t.shape, generator=g).to(t.dtype) for t in (q_embed, k_embed))
    dq, dk = torch.autograd.grad((q_embed, k_embed), (q, k), (dq_embed, dk_embed))
    return {"q_embed": q_embed.detach(), "k_embed": k_embed.detach(), "dq": dq, "dk": dk}


def _upstream(q, k, cos, sin):
    return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatcher_on_cpu_is_upstream(case, dtype):
    q, k, cos, sin = _inputs(*CASES[case], dtype=dtype)
    calls = []

    def counted_upstream(*args, **kwargs):
        calls.append(kwargs)
        return apply_rotary_pos_emb(*args, **kwargs)

    ours = _forward_backward(lambda *a: rotary.apply_rotary(*a, counted_upstream), q, k, cos, sin)
    assert calls == [{"unsqueeze_dim": 2}], "CPU tensors go to upstream's function, for the [1, T, H, D] layout"
    ref = _forward_backward(_upstream, q, k, cos, sin)
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name


_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not _INTERPRETED, reason="the Triton kernels run on CPU only under TRITON_INTERPRET=1 with Triton")
@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernels_match_upstream_in_fp32(case, nan_empty):
    # nan_empty: an output element the kernels never write would read as NaN
    q, k, cos, sin = _inputs(*CASES[case])
    ours = _forward_backward(rotary._rotary_triton, q, k, cos, sin)
    ref = _forward_backward(_upstream, q, k, cos, sin)
    for name in ref:
        assert ours[name].dtype == ref[name].dtype
        assert_close(name, ref[name], ours[name], FP32, FP32_WHY)
    R = cos.shape[-1]
    assert torch.equal(ours["q_embed"][..., R:], q[..., R:]), "the pass-through dims are copied"


@pytest.mark.skipif(not _INTERPRETED, reason="the Triton kernels run on CPU only under TRITON_INTERPRET=1 with Triton")
def test_triton_kernels_take_strided_cos_sin_and_one_gradient(nan_empty):
    """Sequence parallelism passes cos and sin as column halves of one tensor; a loss of q alone leaves dk None."""
    q, k, cos, sin = _inputs(*CASES["partial_like_0.8b"])
    cos_sin = torch.cat([cos, sin], dim=-1)
    cos_half, sin_half = cos_sin.chunk(2, dim=-1)
    q_leaf = q.clone().requires_grad_()
    q_embed, k_embed = rotary._rotary_triton(q_leaf, k, cos_half, sin_half)
    ref_q, ref_k = _upstream(q, k, cos, sin)
    assert_close("q_embed", ref_q, q_embed, FP32, FP32_WHY)
    assert_close("k_embed", ref_k, k_embed, FP32, FP32_WHY)
    q_embed.sum().backward()
    ref_leaf = q.clone().requires_grad_()
    _upstream(ref_leaf, k, cos, sin)[0].sum().backward()
    assert_close("dq", ref_leaf.grad, q_leaf.grad, FP32, FP32_WHY)
