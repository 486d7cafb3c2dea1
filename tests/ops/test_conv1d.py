"""Varlen causal conv1d: packed == per document, against our oracle and transformers' own conv.

Legend: B batch, T tokens, D channels, W kernel width, N documents.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import causal_conv1d_fn

from padfree.ops._backend import fla_available
from padfree.ops.conv1d import causal_conv1d, naive
from tests.helpers import assert_close

# transformers' plain-torch conv ([B, D, T] layout), never a hub or causal-conv1d kernel
HF_CONV = getattr(causal_conv1d_fn, "__wrapped__", causal_conv1d_fn)

D, W = 12, 4
FP32 = 2e-6
FP32_WHY = "fp32 with another summation order: rounding only (seen <= 1.5e-7)."
BF16 = 6e-3
BF16_WHY = (
    "bf16 result rounded once from an fp32 sum, and the bf16 run's dy is bf16 too: about two roundings "
    "of unit roundoff 2^-9 (seen <= 2.4e-3)."
)

CASES = {
    "one_document": [13],
    "row_shorter_than_W": [3],
    "one_token_documents": [1, 5, 1, 1, 9],
    "documents_shorter_than_W": [2, 3, 1, 6, 2],
    "arbitrary_boundaries": [7, 16, 3, 29, 11],
}


def _cu(lengths, device="cpu"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def _inputs(lengths, bias=True, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, sum(lengths), D, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(D, W, generator=g) * 0.5).to(device, dtype).requires_grad_()
    b = torch.randn(D, generator=g).to(device, dtype).requires_grad_() if bias else None
    return x, w, b


def _with_grads(y, params, seed=1):
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y)
    grads = torch.autograd.grad(y, [p for p in params if p is not None], dy)
    return [y.detach(), *grads]


def _hf_per_doc(x, w, b, activation, lengths):
    offsets = _cu(lengths).tolist()
    outs = [HF_CONV(x[:, s:e].transpose(1, 2), w, b, activation) for s, e in zip(offsets, offsets[1:])]
    return torch.cat(outs, dim=2).transpose(1, 2)


def _compare(names, refs, outs, bound, why):
    for name, ref, out in zip(names, refs, outs):
        assert_close(name, ref, out, bound, why)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_per_document(case, bias, activation, nan_empty):
    lengths = CASES[case]
    x, w, b = _inputs(lengths, bias)
    names = ["y", "dx", "dw", "db"][: 4 if bias else 3]
    cu = _cu(lengths)
    ours = _with_grads(causal_conv1d(x, w, b, activation=activation, cu_seqlens=cu, backend="torch"), (x, w, b))
    oracle = _with_grads(causal_conv1d(x, w, b, activation=activation, cu_seqlens=cu, backend="naive"), (x, w, b))
    upstream = _with_grads(_hf_per_doc(x, w, b, activation, lengths), (x, w, b))
    _compare(names, oracle, ours, FP32, FP32_WHY)
    _compare(names, upstream, ours, FP32, FP32_WHY)


def test_plain_conv_over_packed_row_mixes_documents():
    lengths = CASES["documents_shorter_than_W"]
    assert len(lengths) > 1 and min(lengths) < W, "the case must have boundaries inside the conv window"
    x, w, b = _inputs(lengths)
    reference = _hf_per_doc(x, w, b, "silu", lengths)
    mixed = HF_CONV(x.transpose(1, 2), w, b, "silu").transpose(1, 2)
    ours = causal_conv1d(x, w, b, activation="silu", cu_seqlens=_cu(lengths), backend="torch")
    with pytest.raises(AssertionError, match="RMS-relative error"):
        assert_close("y (one conv over the packed row)", reference, mixed, 0.05)
    assert_close("y", reference, ours, FP32, FP32_WHY)


def test_bf16_against_fp32_oracle(nan_empty):
    lengths = CASES["arbitrary_boundaries"]
    x, w, b = _inputs(lengths, dtype=torch.bfloat16)
    cu = _cu(lengths)
    ours = _with_grads(causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend="torch"), (x, w, b))
    assert all(t.dtype == torch.bfloat16 for t in ours)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))  # the same bf16 values
    oracle = _with_grads(naive.causal_conv1d(x32, w32, b32, "silu", cu_seqlens=cu)[0], (x32, w32, b32))
    _compare(["y", "dx", "dw", "db"], oracle, ours, BF16, BF16_WHY)


def test_weight_dtype_may_differ_from_x(nan_empty):
    """Qwen3.5 may hold fp32 conv weights for bf16 activations: fp32 sum, y in x's dtype."""
    lengths = CASES["one_token_documents"]
    x, _, _ = _inputs(lengths, dtype=torch.bfloat16)
    _, w, b = _inputs(lengths, dtype=torch.float32)
    cu = _cu(lengths)
    ours = _with_grads(causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend="torch"), (x, w, b))
    assert [t.dtype for t in ours] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    x32 = x.detach().float().requires_grad_()
    oracle = _with_grads(naive.causal_conv1d(x32, w, b, "silu", cu_seqlens=cu)[0], (x32, w, b))
    _compare(["y", "dx", "dw", "db"], oracle, ours, BF16, BF16_WHY)


def test_batch_rows_without_cu_seqlens(nan_empty):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 10, D, generator=g, requires_grad=True)
    w = torch.randn(D, W, generator=g, requires_grad=True)
    ours = _with_grads(causal_conv1d(x, w, activation="silu", backend="torch"), (x, w))
    upstream = _with_grads(HF_CONV(x.transpose(1, 2), w, None, "silu").transpose(1, 2), (x, w))
    _compare(["y", "dx", "dw"], upstream, ours, FP32, FP32_WHY)


@pytest.mark.parametrize("case", ["documents_shorter_than_W", "arbitrary_boundaries"])
def test_initial_and_final_state(case, nan_empty):
    """The state is the W inputs before each document; the conv reads its last W - 1 columns."""
    lengths = CASES[case]
    x, w, b = _inputs(lengths)
    h0 = torch.randn(len(lengths), D, W, generator=torch.Generator().manual_seed(5), requires_grad=True)
    cu = _cu(lengths)
    kw = dict(activation="silu", initial_state=h0, output_final_state=True, cu_seqlens=cu)
    y, final = causal_conv1d(x, w, b, backend="torch", **kw)
    ours = _with_grads(y, (x, w, b, h0))  # gradients through final_state: see the gradcheck below
    oracle = _with_grads(causal_conv1d(x, w, b, backend="naive", **kw)[0], (x, w, b, h0))
    _compare(["y", "dx", "dw", "db", "dh0"], oracle, ours, FP32, FP32_WHY)
    # independently: transformers' conv on [state, document], dropping the state's outputs
    offsets = cu.tolist()
    for n, (s, e) in enumerate(zip(offsets, offsets[1:])):
        seq_DL = torch.cat([h0[n], x[0, s:e].t()], dim=1)
        ref_y = HF_CONV(seq_DL[None, :, 1:], w, b, "silu")[0, :, W - 1 :]
        assert_close(f"y of document {n}", ref_y.t(), y[0, s:e], FP32, FP32_WHY)
        assert_close(f"final state of document {n}", seq_DL[:, -W:], final[n], 0.0, "a copy of inputs: exact.")


def test_custom_backward_gradcheck():
    """fp64 finite differences through every input of the hand-written backward, state included."""
    lengths = [1, 2, 5, 3]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, sum(lengths), 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, W, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(len(lengths), 3, W, generator=g, dtype=torch.float64, requires_grad=True)
    cu = _cu(lengths)

    def fn(x, w, h0):
        return causal_conv1d(x, w, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="torch")

    assert torch.autograd.gradcheck(fn, (x, w, h0))


def test_documents_never_leak_even_inf():
    """Head rows are overwritten, not corrected by subtraction, so an inf next door cannot turn into NaN."""
    lengths = [4, 6]
    x, w, _ = _inputs(lengths)
    x = x.detach().clone()
    x[0, : lengths[0]] = float("inf")
    y = causal_conv1d(x, w, cu_seqlens=_cu(lengths), backend="torch")
    assert torch.isfinite(y[0, lengths[0] :]).all()


def test_torch_compile_matches_eager():
    lengths = CASES["arbitrary_boundaries"]
    x, w, b = _inputs(lengths)
    cu = _cu(lengths)

    def step(x, w, b):
        return causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend="torch")

    eager = _with_grads(step(x, w, b), (x, w, b))
    # fullgraph: the op must trace without graph breaks (its value checks on cu_seqlens skip while tracing)
    compiled = _with_grads(torch.compile(step, backend="aot_eager", fullgraph=True)(x, w, b), (x, w, b))
    _compare(["y", "dx", "dw", "db"], eager, compiled, 1e-6, "the same ops traced: rounding only.")


SPLITS = [3, 3, 6]  # q, k, v widths of D = 12, as gdn_gate_inputs asks for them


@pytest.mark.parametrize("unused", [None, 1], ids=["all_parts_used", "k_unused"])
@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("case", ["documents_shorter_than_W", "arbitrary_boundaries"])
def test_split_outputs_equal_the_split_of_y(case, backend, unused, nan_empty):
    """split_sizes gives torch.split(y)'s parts as contiguous tensors; gradients through them are the same,
    also when one part's gradient is None (unused)."""
    lengths = CASES[case]
    x, w, b = _inputs(lengths)
    cu = _cu(lengths)
    dys = list(torch.randn(1, sum(lengths), D, generator=torch.Generator().manual_seed(1)).split(SPLITS, -1))
    used = [i for i in range(len(SPLITS)) if i != unused]

    def run(parts):
        grads = torch.autograd.grad([parts[i] for i in used], (x, w, b), [dys[i] for i in used])
        return [torch.cat([p.detach() for p in parts], -1), *grads]

    y = causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend=backend)
    parts = causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend=backend, split_sizes=SPLITS)
    assert isinstance(parts, tuple) and [tuple(p.shape) for p in parts] == [(1, sum(lengths), d) for d in SPLITS]
    assert all(p.is_contiguous() for p in parts)
    exact = "the same backend's y, copied: exact."
    _compare(["y", "dx", "dw", "db"], run(torch.split(y, SPLITS, -1)), run(parts), 0.0, exact)


def test_split_outputs_with_final_state():
    lengths = CASES["documents_shorter_than_W"]
    x, w, b = _inputs(lengths)
    kw = dict(activation="silu", output_final_state=True, cu_seqlens=_cu(lengths), backend="torch")
    y, final = causal_conv1d(x, w, b, **kw)
    parts, split_final = causal_conv1d(x, w, b, split_sizes=SPLITS, **kw)
    assert len(parts) == len(SPLITS)
    _compare(["y", "final_state"], [y, final], [torch.cat(parts, -1), split_final], 0.0, "the same backend: exact.")


def _bad(**changes):
    args = dict(x=torch.randn(1, 7, D), weight=torch.randn(D, W), cu_seqlens=torch.tensor([0, 3, 7]))
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args, message",
    [
        (_bad(x=torch.randn(7, D)), r"x must be \[B, T, D\], got shape \(7, 12\)"),
        (_bad(x=torch.randn(1, 0, D), cu_seqlens=None), "x has no tokens"),
        (_bad(weight=torch.randn(D + 1, W)), r"weight must be \[D, W\] = \[12, W\]"),
        (_bad(weight=torch.randn(D, 1, W)), r"got \(12, 1, 4\)"),
        (_bad(bias=torch.randn(D, 1)), r"bias must be \[D\] = \[12\]"),
        (_bad(activation="relu"), "activation='relu' is not supported"),
        (_bad(x=torch.randn(2, 7, D)), r"cu_seqlens needs one packed row \(B = 1\)"),
        (_bad(cu_seqlens=torch.tensor([0, 3, 6])), "ends at 6 but x has 7 tokens"),
        (_bad(cu_seqlens=torch.tensor([0, 3, 3, 7])), "strictly increasing, but offset 2 is 3 after 3"),
        (_bad(cu_seqlens=torch.tensor([1, 3, 7])), "must start at 0"),
        (_bad(cu_seqlens=torch.tensor([0.0, 7.0])), "1-D integer tensor"),
        (_bad(cu_seqlens_cpu=(0, 7)), "cu_seqlens_cpu has 2 offsets but cu_seqlens has 3"),
        (_bad(cu_seqlens_cpu=[0, 3, 8]), "ends at 8"),
        (_bad(initial_state=torch.randn(1, D, W)), r"initial_state must be \[N, D, W\] = \[2, 12, 4\]"),
        (_bad(x=torch.ones(1, 7, D, dtype=torch.long)), "x must be a floating tensor"),
        (_bad(backend="triton"), "backend='triton' needs CUDA"),
        (_bad(backend="cuda"), "backend='cuda' is not one of"),  # FLA's own backend names are not ours
        (_bad(backend="fla"), "backend='fla' needs CUDA"),
        (_bad(split_sizes=[4, 4, 3]), r"split_sizes=\[4, 4, 3\] sums to 11 but x has D = 12 channels; pass sizes"),
        (_bad(split_sizes=[6, 0, 6]), r"split_sizes=\[6, 0, 6\] has a part of <= 0 channels"),
        (_bad(split_sizes=[13, -1]), r"has a part of <= 0 channels; leave empty parts out"),
        (_bad(split_sizes=[6.0, 6.0]), r"split_sizes must be ints"),
        (_bad(split_sizes=[]), r"split_sizes=\[\] sums to 0 but x has D = 12"),
    ],
)
def test_invalid_inputs_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        causal_conv1d(**args)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_on_cuda(dtype):
    lengths = CASES["arbitrary_boundaries"] * 3
    x, w, b = _inputs(lengths, dtype=dtype, device="cuda")
    cu = _cu(lengths, "cuda")
    ours = _with_grads(causal_conv1d(x, w, b, activation="silu", cu_seqlens=cu, backend="torch"), (x, w, b))
    x32, w32, b32 = (t.detach().cpu().float().requires_grad_() for t in (x, w, b))
    oracle = _with_grads(naive.causal_conv1d(x32, w32, b32, "silu", cu_seqlens=cu.cpu())[0], (x32, w32, b32))
    bound, why = (FP32, FP32_WHY) if dtype == torch.float32 else (BF16, BF16_WHY)
    _compare(["y", "dx", "dw", "db"], oracle, [t.cpu() for t in ours], bound, why)


@cuda
@pytest.mark.skipif(not fla_available(), reason="needs flash-linear-attention")
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_backend_matches_torch_backend(dtype, with_state, strided):
    # the pass-through module itself: resolve_backend may refuse "fla" on Hopper for the *gated delta*
    # backward (a Triton miscompile), which does not concern this conv kernel
    from padfree.ops.conv1d import fla_backend

    lengths = CASES["documents_shorter_than_W"] + CASES["arbitrary_boundaries"] * 4
    x, w, b = _inputs(lengths, dtype=dtype, device="cuda")
    leaf = x
    if strided:  # x as a column slice of a wider row, as Ulysses passes each rank's conv channels
        leaf = torch.randn(*x.shape[:2], D + 5, device="cuda", dtype=dtype, requires_grad=True)
        x = leaf[..., 3 : 3 + D]
        assert not x.is_contiguous()
    h0 = torch.randn(len(lengths), D, W, device="cuda", dtype=dtype, requires_grad=True) if with_state else None
    cu = _cu(lengths, "cuda")
    args = (x, w, b, "silu", h0, with_state, cu)
    y_fla, final_fla = fla_backend.causal_conv1d(*args, cu_seqlens_host=cu.cpu().tolist())
    y_ref, final_ref = naive.causal_conv1d(*args)
    params = (leaf, w, b, h0)
    fla = _with_grads(y_fla, params)
    ref = _with_grads(y_ref, params)
    names = ["y", "dx", "dw", "db", "dh0"][: 5 if with_state else 4]
    bound, why = (FP32, FP32_WHY) if dtype == torch.float32 else (BF16, BF16_WHY)
    _compare(names, ref, fla, bound, why)
    if with_state:
        assert_close("final_state", final_ref, final_fla, 0.0, "a copy of inputs: exact.")


def test_auto_conv_backend_on_cpu_is_torch_and_triton_is_refused_there():
    from padfree.ops.conv1d import conv_backend

    cpu = torch.device("cpu")
    assert conv_backend("auto", cpu) == "torch"
    assert conv_backend("auto", cpu, with_states=True) == "torch"
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        conv_backend("triton", cpu)
