"""On CUDA: padfree's rotary Triton kernels (padfree.ops.rotary) against transformers' `apply_rotary_pos_emb`.

Skipped without CUDA. The reference is upstream's function run in fp32 on the same values (inputs and output
gradients upcast), with autograd for the gradients. Bounds, RMS-relative:
- fp32: 1e-6. The same products and sums as upstream; only the compiler's fused multiply-add may round once
  less (a few ulps of 2^-24).
- bf16: 2^-8. The kernels compute in fp32 from the same bf16 values and round the output (and dq, dk) once to
  bf16; one rounding to nearest is at most 2^-8 relative per element, so at most that in RMS too.
Also checked: the kernel path was taken (no call to upstream; the outputs' grad_fn is the kernels' Function),
under autocast (fp32 cos/sin with bf16 q, k, as bf16-mixed training has them) the kernels return upstream's
fp32 result rounded once to bf16, and without autocast those mixed dtypes go to upstream.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

from padfree.ops.rotary import apply_rotary
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytest.importorskip("triton", reason="needs Triton (PyTorch's CUDA wheels)")
BOUNDS = {torch.float32: 1e-6, torch.bfloat16: 2**-8}
CASES = {  # T, H, HKV, D, R
    "qwen3.5_0.8b": (4099, 8, 2, 256, 64),  # partial_rotary_factor 0.25; odd T: the last program is partly masked
    "full_rotary": (33, 3, 1, 32, 32),
    "odd_sizes": (7, 2, 2, 24, 6),  # D not a power of two
}


class _Counting:
    """upstream's function, counting its calls: a count of 0 means the kernels ran."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return apply_rotary_pos_emb(*args, **kwargs)


def _inputs(T, H, HKV, D, R, dtype):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, T, H, D, generator=g), torch.randn(1, T, HKV, D, generator=g)
    angle = torch.randn(1, T, R, generator=g) * 3
    dq_embed, dk_embed = torch.randn(q.shape, generator=g), torch.randn(k.shape, generator=g)
    return [t.to("cuda", dtype) for t in (q, k, angle.cos(), angle.sin(), dq_embed, dk_embed)]


def _run(fn, q, k, cos, sin, dq_embed, dk_embed):
    q, k = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    q_embed, k_embed = fn(q, k, cos, sin)
    dq, dk = torch.autograd.grad((q_embed, k_embed), (q, k), (dq_embed, dk_embed))
    return {"q_embed": q_embed, "k_embed": k_embed, "dq": dq, "dk": dk}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_rotary_matches_upstream_in_fp32(case, dtype):
    inputs = _inputs(*CASES[case], dtype)
    upstream = _Counting()
    ours = _run(lambda *a: apply_rotary(*a, upstream), *inputs)
    assert upstream.calls == 0, "the kernels did not run"
    assert type(ours["q_embed"].grad_fn).__name__ == "_RotaryBackward"
    ref = _run(lambda *a: apply_rotary_pos_emb(*a, unsqueeze_dim=2), *(t.float() for t in inputs))
    for name, value in ours.items():
        assert value.dtype == dtype, name
        assert_close(name, ref[name], value, BOUNDS[dtype], f"one {dtype} rounding of an fp32 result")


def test_cuda_rotary_under_autocast_rounds_upstreams_fp32_result_once():
    q, k, cos, sin, dq_embed, dk_embed = _inputs(*CASES["qwen3.5_0.8b"], torch.bfloat16)
    cos32, sin32 = cos.float(), sin.float()
    upstream = _Counting()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = _run(lambda *a: apply_rotary(*a, upstream), q, k, cos32, sin32, dq_embed, dk_embed)
    assert upstream.calls == 0, "the kernels did not run under autocast"
    ref = _run(lambda *a: apply_rotary_pos_emb(*a, unsqueeze_dim=2), q.float(), k.float(), cos32, sin32,
               dq_embed.float(), dk_embed.float())  # fmt: skip
    for name, value in ours.items():
        assert value.dtype == torch.bfloat16, name
        assert_close(name, ref[name], value, 2**-8, "one bf16 rounding of upstream's fp32 result")


def test_cuda_rotary_mixed_dtypes_without_autocast_are_upstream():
    q, k, cos, sin, _, _ = _inputs(*CASES["odd_sizes"], torch.bfloat16)
    upstream = _Counting()
    ours = apply_rotary(q, k, cos.float(), sin.float(), upstream)
    assert upstream.calls == 1
    ref = apply_rotary_pos_emb(q, k, cos.float(), sin.float(), unsqueeze_dim=2)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
