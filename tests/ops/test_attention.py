"""Varlen attention: packed == per document, against transformers' eager attention.

Legend: T tokens, H query heads, HKV key/value heads, D head dim, N documents.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3_5.modeling_qwen3_5 import eager_attention_forward

from padfree.ops.attention import _torch_varlen_attn, varlen_attention
from tests.helpers import assert_close

FP32 = 2e-6
FP32_WHY = "fp32 softmax attention, another kernel and summation order: rounding only."
BF16 = 1e-2
BF16_WHY = (
    "bf16 inputs, outputs and dy against an fp32 oracle on the same values: a few roundings of unit "
    "roundoff 2^-9 = 2e-3, plus the kernel's bf16 probabilities before P@V."
)

CASES = {
    "one_document": [16],
    "one_token_documents": [1, 6, 1, 1, 9],
    "equal_lengths_batched": [5, 3, 5, 5, 3, 1],
    "arbitrary_boundaries": [7, 16, 3, 29, 11],
}


def _cu(lengths, device="cpu"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def _qkv(T, H, HKV, D, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, h, D, generator=g).to(device, dtype).requires_grad_() for h in (H, HKV, HKV)]


def _with_grads(out, params, seed=1):
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return [out.detach(), *torch.autograd.grad(out, params, dout)]


def _eager_per_doc(q, k, v, lengths, scale=None):
    """transformers' eager attention, one call per document with a causal mask."""
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    offsets = _cu(lengths).tolist()
    outs = []
    for s, e in zip(offsets, offsets[1:]):
        mask = torch.full((e - s, e - s), float("-inf"), device=q.device).triu(1).to(q.dtype)
        q_, k_, v_ = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))
        outs.append(eager_attention_forward(module, q_, k_, v_, mask[None, None], scale)[0][0])
    return torch.cat(outs)


def _attend(q, k, v, lengths, backend="sdpa_per_doc", scale=None):
    cu = _cu(lengths, q.device)
    return varlen_attention(q, k, v, cu, max(lengths), scale=scale, backend=backend, cu_seqlens_host=tuple(cu.tolist()))


@pytest.mark.parametrize("H, HKV", [(4, 2), (2, 2)])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_per_document(case, H, HKV, nan_empty):
    lengths = CASES[case]
    q, k, v = _qkv(sum(lengths), H, HKV, 8)
    ours = _with_grads(_attend(q, k, v, lengths), (q, k, v))
    upstream = _with_grads(_eager_per_doc(q, k, v, lengths), (q, k, v))
    for name, ref, out in zip(["o", "dq", "dk", "dv"], upstream, ours):
        assert_close(name, ref, out, FP32, FP32_WHY)


def test_custom_scale_and_device_offsets():
    lengths = CASES["arbitrary_boundaries"]
    q, k, v = _qkv(sum(lengths), 4, 1, 8)
    cu = _cu(lengths)
    ours = varlen_attention(q, k, v, cu, max(lengths), scale=0.3, backend="auto")  # offsets read from cu
    assert_close("o", _eager_per_doc(q, k, v, lengths, scale=0.3), ours, FP32, FP32_WHY)


def test_plain_causal_sdpa_over_packed_row_mixes_documents():
    lengths = CASES["arbitrary_boundaries"]
    assert len(lengths) > 1, "the case must have document boundaries"
    q, k, v = _qkv(sum(lengths), 4, 2, 8)
    reference = _eager_per_doc(q, k, v, lengths)
    mixed = F.scaled_dot_product_attention(
        *(t.transpose(0, 1) for t in (q, k, v)), is_causal=True, enable_gqa=True
    ).transpose(0, 1)
    with pytest.raises(AssertionError, match="RMS-relative error"):
        assert_close("o (one causal SDPA over the packed row)", reference, mixed, 0.05)
    assert_close("o", reference, _attend(q, k, v, lengths), FP32, FP32_WHY)


def test_bf16_against_fp32_oracle(nan_empty):
    lengths = CASES["one_token_documents"]
    q, k, v = _qkv(sum(lengths), 4, 2, 16, dtype=torch.bfloat16)
    ours = _with_grads(_attend(q, k, v, lengths), (q, k, v))
    assert all(t.dtype == torch.bfloat16 for t in ours)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))  # the same bf16 values
    oracle = _with_grads(_eager_per_doc(q32, k32, v32, lengths), (q32, k32, v32))
    for name, ref, out in zip(["o", "dq", "dk", "dv"], oracle, ours):
        assert_close(name, ref, out, BF16, BF16_WHY)


def _tail_queries(q, k, v, lengths, tails, backend="sdpa_per_doc"):
    """Each document's last `tail` queries against all of its keys (what context parallelism asks)."""
    offsets = _cu(lengths).tolist()
    rows = torch.cat([torch.arange(e - n, e) for e, n in zip(offsets[1:], tails)])
    cu_q = _cu(tails, q.device)
    return varlen_attention(
        q[rows], k, v, cu_q, max(tails), backend=backend,
        cu_seqlens_k=_cu(lengths, q.device), max_seqlen_k=max(lengths),
    ), rows  # fmt: skip


@pytest.mark.parametrize("tails", [[7, 1, 3, 29, 2], [7, 16, 3, 29, 11], [1, 1, 1, 1, 1]])
def test_more_keys_than_queries_is_bottom_right_causal(tails, nan_empty):
    """Query i of a document's tail sees exactly the keys the same token sees in the full document."""
    lengths = CASES["arbitrary_boundaries"]
    q, k, v = _qkv(sum(lengths), 4, 2, 8)
    ours, rows = _tail_queries(q, k, v, lengths, tails)
    assert any(t < n for t, n in zip(tails, lengths)) or tails == lengths
    dout = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    ours_grads = torch.autograd.grad(ours, (q, k, v), dout)
    full = _eager_per_doc(q, k, v, lengths)[rows]  # every query over its whole document, then the tails
    assert_close("o", full, ours, FP32, FP32_WHY)
    for name, ref, out in zip(["dq", "dk", "dv"], torch.autograd.grad(full, (q, k, v), dout), ours_grads):
        assert_close(name, ref, out, FP32, FP32_WHY)


def test_fewer_keys_than_queries_is_refused():
    q, k, v = _qkv(10, 2, 2, 8)
    with pytest.raises(ValueError, match="document 1 has 6 queries but only 5 keys"):
        varlen_attention(
            q, k[:9], v[:9], _cu([4, 6]), 6, backend="sdpa_per_doc", cu_seqlens_k=_cu([4, 5]), max_seqlen_k=5
        )


def _bad(**changes):
    T, H, HKV, D = 7, 4, 2, 8
    args = dict(q=torch.randn(T, H, D), k=torch.randn(T, HKV, D), v=torch.randn(T, HKV, D))
    args.update(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32), max_seqlen=4)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args, message",
    [
        (_bad(q=torch.randn(1, 7, 4, 8)), r"must be \[T, H, D\] \(no batch dim\)"),
        (_bad(k=torch.randn(7, 2, 4)), r"k and v must both be \[Tk, HKV, D\] = \[Tk, HKV, 8\]"),
        (_bad(k=torch.randn(7, 3, 8), v=torch.randn(7, 3, 8)), "H = 4 heads, not a multiple of k/v's HKV = 3"),
        (_bad(v=torch.randn(7, 2, 8, dtype=torch.float64)), "dtypes differ"),
        (_bad(cu_seqlens=torch.tensor([0, 3, 6])), "ends at 6 but q has 7 tokens"),
        (_bad(cu_seqlens=torch.tensor([0, 5, 3, 7])), "strictly increasing, but offset 2 is 3 after 5"),
        (_bad(cu_seqlens=torch.tensor([2, 3, 7])), "must start at 0"),
        (_bad(cu_seqlens=torch.tensor([[0, 7]])), "1-D integer tensor"),
        (_bad(max_seqlen=3), r"max_seqlen = 3 is shorter than the longest document \(4 tokens\)"),
        (_bad(max_seqlen=4.0), "max_seqlen must be a positive int"),
        (_bad(cu_seqlens_host=(0, 7)), "cu_seqlens_host has 2 offsets but cu_seqlens has 3"),
        (_bad(cu_seqlens_host=(0, 3, 8)), "ends at 8"),
        (_bad(backend="flex"), "backend='flex' is not one of"),
        (_bad(backend="varlen_attn"), "needs CUDA tensors in fp16/bf16"),
        (_bad(backend="flash_attn"), "use backend='sdpa_per_doc'"),
    ],
)
def test_invalid_inputs_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        varlen_attention(**args)


# ---- CUDA backends against sdpa_per_doc in fp32 (run on a GPU machine) ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HAS_FLASH_ATTN = any(importlib.util.find_spec(m) is not None for m in ("flash_attn", "flash_attn_interface"))


def _cuda_check(backend, H, HKV, D, scale):
    lengths = [1, 37, 128, 5, 300, 64, 1, 200]
    q, k, v = _qkv(sum(lengths), H, HKV, D, dtype=torch.bfloat16, device="cuda")
    ours = _with_grads(_attend(q, k, v, lengths, backend=backend, scale=scale), (q, k, v))
    assert ours[0].dtype == torch.bfloat16
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    oracle = _with_grads(_attend(q32, k32, v32, lengths, scale=scale), (q32, k32, v32))
    for name, ref, out in zip(["o", "dq", "dk", "dv"], oracle, ours):
        assert_close(f"{backend} {name}", ref, out, BF16, BF16_WHY)


@cuda
@pytest.mark.skipif(_torch_varlen_attn() is None, reason="needs torch.nn.attention.varlen")
@pytest.mark.parametrize("H, HKV, D, scale", [(8, 2, 256, None), (4, 4, 128, 0.05), (6, 1, 64, None)])
def test_torch_varlen_attn_backend(H, HKV, D, scale):
    _cuda_check("varlen_attn", H, HKV, D, scale)


@cuda
@pytest.mark.skipif(not HAS_FLASH_ATTN, reason="needs flash-attn")
@pytest.mark.parametrize("H, HKV, D, scale", [(8, 2, 256, None), (4, 4, 128, 0.05)])
def test_flash_attn_backend(H, HKV, D, scale):
    _cuda_check("flash_attn", H, HKV, D, scale)


@cuda
@pytest.mark.skipif(_torch_varlen_attn() is None, reason="needs torch.nn.attention.varlen")
def test_torch_varlen_attn_more_keys_than_queries():
    lengths, tails = [37, 128, 5, 300, 64], [37, 20, 1, 150, 64]
    q, k, v = _qkv(sum(lengths), 8, 2, 128, dtype=torch.bfloat16, device="cuda")
    ours, rows = _tail_queries(q, k, v, lengths, tails, backend="varlen_attn")
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    oracle, _ = _tail_queries(q32, k32, v32, lengths, tails)
    assert_close("varlen_attn tail queries", oracle, ours, BF16, BF16_WHY)


@cuda
def test_auto_on_cuda():
    lengths = [3, 60, 1]
    q, k, v = _qkv(sum(lengths), 4, 2, 64, dtype=torch.bfloat16, device="cuda")
    expected = "varlen_attn" if _torch_varlen_attn() is not None else "flash_attn" if HAS_FLASH_ATTN else "sdpa_per_doc"
    assert torch.equal(_attend(q, k, v, lengths, backend="auto"), _attend(q, k, v, lengths, backend=expected))
    q32, k32, v32 = (t.float() for t in (q, k, v))  # fp32 on CUDA: no flash kernel, exact fallback
    assert torch.equal(_attend(q32, k32, v32, lengths, backend="auto"), _attend(q32, k32, v32, lengths))
