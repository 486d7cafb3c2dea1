"""Varlen chunked gated delta rule: packed == per document, against our oracle and transformers.

Every comparison covers the output, each document's final state and the gradient of every input.
Legend: B batch, T tokens, N documents, H query/key heads, HV value heads, K key dim, V value dim.
"""

from __future__ import annotations

import functools
import inspect
import os

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule, torch_recurrent_gated_delta_rule

from padfree.ops.gated_delta import chunk_gated_delta_rule, layout, torch_backend
from tests.helpers import assert_close, rms_relative_error

# transformers' plain-torch bodies, never a hub or FLA kernel
HF_CHUNK = inspect.unwrap(torch_chunk_gated_delta_rule)
HF_RECURRENT = inspect.unwrap(torch_recurrent_gated_delta_rule)

H, K, V = 2, 16, 32
NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
FP32 = 1e-5
FP32_WHY = "fp32 chunked vs per-token sums: rounding only, grown over a few hundred steps (seen <= 7e-7)."
BF16 = 6e-3
BF16_WHY = (
    "bf16 in and out, fp32 inside. The oracle runs in fp32 on the same bf16-rounded inputs, so the gap is "
    "rounding: the output and each bf16 gradient are rounded once (unit roundoff 2^-8 = 3.9e-3, about "
    "2.3e-3 RMS-relative), and the upstream gradient of the bf16 run is bf16 too: at most about two "
    "roundings, sqrt(2) * 2.3e-3 = 3.2e-3 (seen <= 2.4e-3)."
)
CASES = {
    "one_document": [150],
    "one_token": [1],
    "unaligned": [1, 63, 65, 130, 7],
    "chunk_aligned": [64, 128, 2],
    "tiny_documents": [3, 1, 2, 5, 1, 9, 4, 1, 30, 70],
}


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def _inputs(lengths, HV=2 * H, l2norm=True, h0=True, dtype=torch.float32, seed=0, B=1, K=K, V=V):
    """Leaf inputs (q, k, v, g, beta, h0) of a packed row (B = 1) or B unpacked rows of sum(lengths)."""
    gen = torch.Generator().manual_seed(seed)
    T, N = sum(lengths), len(lengths) if B == 1 else B
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if not l2norm:  # unit keys keep the delta rule contractive, as the kernel-side l2norm would
        q, k = q * 0.5, F.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V, generator=gen)
    g = F.logsigmoid(1.5 * torch.randn(B, T, HV, generator=gen) + 2.0)  # mostly slow decay: long memory
    beta = torch.randn(B, T, HV, generator=gen).sigmoid()
    state = 0.5 * torch.randn(N, HV, K, V, generator=gen) if h0 else None
    # q, k, v, beta in the test dtype; g and states stay fp32 (as in Qwen3.5)
    xs = [x.to(dtype) for x in (q, k, v)] + [g, beta.to(dtype), state]
    return [None if x is None else x.requires_grad_() for x in xs]


def _run(fn, inputs, seed=1):
    """(o, final_state, *grads of every input) for a random upstream gradient."""
    o, ht = fn(*inputs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(o.dtype)
    dht = torch.randn(ht.shape, generator=gen)
    leaves = [x for x in inputs if x is not None]
    grads = torch.autograd.grad((o, ht), leaves, (do, dht))
    return [o.detach(), ht.detach(), *grads]


def _run_o(fn, inputs, seed=1):
    """(o, *grads of every input) for a random upstream gradient; for calls without final states."""
    o = fn(*inputs)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed)).to(o.dtype)
    return [o.detach(), *torch.autograd.grad(o, inputs, do)]


def _per_document(lengths, inputs, call):
    """Run `call` on each document alone ([1, len_i] slices, its own initial state) and
    concatenate: the reference a packed run must match. Differentiable, so grads flow to inputs."""
    q, k, v, g, beta, h0 = inputs
    offsets = _cu(lengths).tolist()
    outs, finals = [], []
    for n, (s, e) in enumerate(zip(offsets, offsets[1:])):
        o, ht = call(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], None if h0 is None else h0[n : n + 1])
        outs.append(o)
        finals.append(ht)
    return torch.cat(outs, dim=1), torch.cat(finals)


@functools.cache
def _case(lengths: tuple[int, ...], HV=2 * H, l2norm=True, h0=True, dtype=torch.float32):
    """Inputs and their oracle results, computed once for all state scans (the oracle is slow)."""
    inputs = _inputs(list(lengths), HV=HV, l2norm=l2norm, h0=h0, dtype=dtype)
    return inputs, _oracle(list(lengths), inputs, l2norm)


def _oracle(lengths, inputs, l2norm):
    """The fp32 oracle per document, on fp32 copies of the (possibly bf16) inputs."""
    ref_inputs = [None if x is None else x.detach().float().requires_grad_() for x in inputs]

    def naive(q, k, v, g, beta, h0):
        return chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2norm,
            backend="naive",
        )  # fmt: skip

    return _run(lambda *xs: _per_document(lengths, xs, naive), ref_inputs)


def _packed(lengths, inputs, l2norm, state_scan="auto"):
    cu = _cu(lengths)

    def fn(q, k, v, g, beta, h0):
        if state_scan == "auto":
            return chunk_gated_delta_rule(
                q, k, v, g, beta, initial_state=h0, output_final_state=True,
                use_qk_l2norm_in_kernel=l2norm, cu_seqlens=cu, backend="torch",
            )  # fmt: skip
        return torch_backend.chunk_gated_delta_rule(
            q, k, v, g, beta, K**-0.5, h0, True, l2norm, tuple(cu.tolist()), state_scan=state_scan
        )

    return _run(fn, inputs)


def _compare(refs, outs, bound, why, names=NAMES):
    for name, ref, out in zip(names, refs, outs):
        assert_close(name, ref, out, bound, why)


@pytest.mark.parametrize("state_scan", ["loop", "scan"])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_per_document(case, state_scan, nan_empty):
    lengths = CASES[case]
    inputs, oracle = _case(tuple(lengths))
    ours = _packed(lengths, inputs, l2norm=True, state_scan=state_scan)
    _compare(oracle, ours, FP32, FP32_WHY)
    if len(lengths) > 1:  # the same row without boundaries must be far off, or the test proves nothing
        o_mixed, _ = chunk_gated_delta_rule(*inputs[:5], use_qk_l2norm_in_kernel=True, backend="torch")
        assert rms_relative_error(ours[0], o_mixed) > 100 * FP32, "documents did not influence each other"


def test_cases_cover_boundaries():
    """Guard against vacuous passes: the cases really hold boundaries inside chunks and on edges."""
    offsets = _cu(CASES["unaligned"]).tolist()[1:-1]
    assert len(offsets) >= 4 and any(o % 64 for o in offsets) and 1 in CASES["unaligned"]
    assert all(o % 64 == 0 for o in _cu(CASES["chunk_aligned"]).tolist()[:-1])
    tiny = _cu(CASES["tiny_documents"]).tolist()
    assert sum(1 for o in tiny[1:-1] if o < 64) >= 8  # many documents in one chunk


@pytest.mark.parametrize("grouped", [False, True], ids=["HV=H", "HV=2H"])
@pytest.mark.parametrize("l2norm", [False, True], ids=["no_l2norm", "l2norm"])
@pytest.mark.parametrize("h0", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("state_scan", ["loop", "scan"])
def test_options(h0, l2norm, grouped, state_scan, nan_empty):
    lengths = CASES["unaligned"]
    inputs, oracle = _case(tuple(lengths), HV=2 * H if grouped else H, l2norm=l2norm, h0=h0)
    ours = _packed(lengths, inputs, l2norm=l2norm, state_scan=state_scan)
    _compare(oracle, ours, FP32, FP32_WHY, NAMES if h0 else NAMES[:-1])


@pytest.mark.parametrize("state_scan", ["loop", "scan"])
@pytest.mark.parametrize("case", ["one_document", "unaligned"])
def test_bf16(case, state_scan, nan_empty):
    lengths = CASES[case]
    inputs, oracle = _case(tuple(lengths), dtype=torch.bfloat16)
    ours = _packed(lengths, inputs, l2norm=True, state_scan=state_scan)
    assert ours[0].dtype == torch.bfloat16 and ours[1].dtype == torch.float32
    _compare(oracle, ours, BF16, BF16_WHY)


def test_oracle_and_torch_match_transformers_per_document(nan_empty):
    """transformers' recurrent and chunked functions (l2norm on, scale K^-0.5, grouped value heads)."""
    lengths = CASES["unaligned"]
    inputs, oracle = _case(tuple(lengths))

    def hf(fn):
        def call(q, k, v, g, beta, h0):
            return fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)

        return lambda *xs: _per_document(lengths, xs, call)

    recurrent, chunked = _run(hf(HF_RECURRENT), inputs), _run(hf(HF_CHUNK), inputs)
    ours = _packed(lengths, inputs, l2norm=True)
    for ref in (recurrent, chunked):
        _compare(ref, oracle, FP32, FP32_WHY)
        _compare(ref, ours, FP32, FP32_WHY)


@pytest.mark.parametrize("state_scan", ["loop", "scan"])
def test_unpacked_batch_matches_transformers(state_scan, nan_empty):
    """cu_seqlens=None with B rows: B independent sequences, as in transformers' batched function."""
    inputs = _inputs([100], B=3)

    def ours(q, k, v, g, beta, h0):
        return torch_backend.chunk_gated_delta_rule(q, k, v, g, beta, K**-0.5, h0, True, True, None, state_scan)

    def hf(q, k, v, g, beta, h0):
        return HF_CHUNK(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)

    _compare(_run(hf, inputs), _run(ours, inputs), FP32, FP32_WHY)


@pytest.mark.parametrize("state_scan", ["loop", "scan"])
def test_training_call_without_states(state_scan, nan_empty):
    """The training path: no initial state, no final state (their code paths are skipped)."""
    lengths = CASES["unaligned"]
    inputs = _inputs(lengths, h0=False)[:5]
    offsets = tuple(_cu(lengths).tolist())

    def fn(q, k, v, g, beta):
        o, ht = torch_backend.chunk_gated_delta_rule(q, k, v, g, beta, K**-0.5, None, False, True, offsets, state_scan)
        assert ht is None
        return o

    def naive(q, k, v, g, beta, h0):
        return chunk_gated_delta_rule(
            q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True, backend="naive"
        )

    oracle = _run_o(lambda *xs: _per_document(lengths, [*xs, None], naive)[0], inputs)
    _compare(oracle, _run_o(fn, inputs), FP32, FP32_WHY, ["o", "dq", "dk", "dv", "dg", "dbeta"])


COMPILE_CASE = [1, 63, 65, 7]  # few chunks: tracing unrolls the loop over them


@pytest.mark.parametrize("state_scan", ["loop", "scan"])
def test_training_compute_compiles_as_one_graph(state_scan):
    """Past the host-side layout, the training path (no initial or final states) has no
    data-dependent control flow: one graph, with its backward."""
    inputs = _inputs(COMPILE_CASE, h0=False)[:5]
    seg = layout.packed(tuple(_cu(COMPILE_CASE).tolist()), torch.device("cpu"))

    def fn(q, k, v, g, beta):
        return torch_backend._chunked(q, k, v, g, beta, K**-0.5, None, False, True, seg, state_scan)[0]

    torch._dynamo.reset()
    compiled = _run_o(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs)
    _compare(_run_o(fn, inputs), compiled, 1e-6, "same ops, traced", ["o", "dq", "dk", "dv", "dg", "dbeta"])


@pytest.mark.skipif(
    os.environ.get("PADFREE_TEST_INDUCTOR") != "1",
    reason="inductor's C++ compile takes ~40 s per case on 2 cold cores; set PADFREE_TEST_INDUCTOR=1",
)
@pytest.mark.parametrize("state_scan", ["loop", "scan"])
def test_inductor_matches_eager(state_scan):
    """inductor on CPU, with initial and final states (their gathers run eagerly: see
    torch_backend._final_states for the inductor CPU bug this guards against)."""
    inputs = _inputs(COMPILE_CASE)
    offsets = tuple(_cu(COMPILE_CASE).tolist())

    def fn(q, k, v, g, beta, h0):
        return torch_backend.chunk_gated_delta_rule(q, k, v, g, beta, K**-0.5, h0, True, True, offsets, state_scan)

    torch._dynamo.reset()
    compiled = _run(torch.compile(fn), inputs)
    _compare(_run(fn, inputs), compiled, FP32, "inductor reorders and fuses fp32 arithmetic: rounding only")


def test_compiled_graph_is_reused_across_layouts():
    """Training calls (no initial/final states) with new document boundaries but the same row
    length must not recompile: the layout reaches the compiled compute as tensors only."""
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()

    @torch.compile(backend=counter)
    def fn(q, k, v, g, beta, cu):
        return chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, cu_seqlens=cu, backend="torch")

    for lengths in ([1, 63, 65, 7], [50, 86], [3, 3, 100, 30]):
        inputs = _inputs(lengths, h0=False)[:5]
        o, ht = fn(*inputs, _cu(lengths))
        ref, _ = chunk_gated_delta_rule(*inputs, use_qk_l2norm_in_kernel=True, cu_seqlens=_cu(lengths))
        assert ht is None
        assert_close("o", ref, o, 1e-6, "same ops, traced")
    assert counter.frame_count == 1, f"compiled {counter.frame_count} graphs for one row length"


def _bad(**changes):
    """Valid packed inputs (3 documents, T=10, H=2, HV=4), with some replaced."""
    gen = torch.Generator().manual_seed(0)
    args = dict(
        q=torch.randn(1, 10, 2, 8, generator=gen), k=torch.randn(1, 10, 2, 8, generator=gen),
        v=torch.randn(1, 10, 4, 8, generator=gen), g=-torch.rand(1, 10, 4, generator=gen),
        beta=torch.rand(1, 10, 4, generator=gen), initial_state=torch.zeros(3, 4, 8, 8),
        cu_seqlens=torch.tensor([0, 3, 4, 10], dtype=torch.int32),
    )  # fmt: skip
    args.update(changes)
    return args


def _drop_heads(a, HV):
    return dict(v=torch.randn(1, 10, HV, 8), g=a["g"][..., :HV], beta=a["beta"][..., :HV])


# name: (changes to the valid inputs, the error message it must raise)
BAD = {
    "batch_with_cu_seqlens": (
        lambda a: {n: torch.cat([a[n]] * 2) for n in ("q", "k", "v", "g", "beta")}, r"B=1.*got B=2"
    ),
    "HV_not_multiple_of_H": (lambda a: _drop_heads(a, 3), r"HV=3 heads, not a multiple of q/k's H=2"),
    "k_shape": (lambda a: dict(k=a["k"][:, :, :1]), r"k \(1, 10, 1, 8\) must have q's shape"),
    "v_length": (lambda a: dict(v=a["v"][:, :9]), r"v \(1, 9, 4, 8\) must share q's batch and length"),
    "q_not_4d": (lambda a: dict(q=a["q"][0]), r"q must be \[B, T, H, K\]"),
    "g_shape": (lambda a: dict(g=a["g"][..., :2]), r"g \(1, 10, 2\) must be \[B, T, HV\]"),
    "beta_shape": (lambda a: dict(beta=a["beta"][:, :5]), r"beta \(1, 5, 4\) must be"),
    "empty_row": (lambda a: {n: a[n][:, :0] for n in ("q", "k", "v", "g", "beta")}, r"empty \(T=0\)"),
    "initial_state_N": (
        lambda a: dict(initial_state=torch.zeros(2, 4, 8, 8)), r"initial_state \(2, 4, 8, 8\).*\(3, 4, 8, 8\)"
    ),
    "initial_state_HV": (lambda a: dict(initial_state=torch.zeros(3, 2, 8, 8)), r"initial_state \(3, 2, 8, 8\)"),
    "initial_state_KV": (lambda a: dict(initial_state=torch.zeros(3, 4, 8, 4)), r"initial_state \(3, 4, 8, 4\)"),
    "cu_seqlens_float": (lambda a: dict(cu_seqlens=torch.tensor([0.0, 3.0, 10.0])), r"must hold integers"),
    "cu_seqlens_2d": (lambda a: dict(cu_seqlens=torch.tensor([[0, 3, 10]])), r"cu_seqlens must be 1-D"),
    "cu_seqlens_start": (lambda a: dict(cu_seqlens=torch.tensor([1, 3, 10])), r"must start at 0"),
    "cu_seqlens_not_increasing": (
        lambda a: dict(cu_seqlens=torch.tensor([0, 3, 3, 10])), r"strictly increasing.*offset 2 is 3 after 3"
    ),
    "cu_seqlens_end": (lambda a: dict(cu_seqlens=torch.tensor([0, 3, 9])), r"ends at 9 but the row has 10 tokens"),
    "cu_seqlens_cpu_mismatch": (
        lambda a: dict(cu_seqlens_cpu=torch.tensor([0, 10])), r"cu_seqlens_cpu has 2 offsets but cu_seqlens has 4"
    ),
    "cu_seqlens_host_ints_mismatch": (
        lambda a: dict(cu_seqlens_cpu=(0, 10)), r"cu_seqlens_cpu has 2 offsets but cu_seqlens has 4"
    ),
    "dtype_mismatch": (lambda a: dict(v=a["v"].bfloat16()), r"q, k, v must share one float dtype"),
    "integer_g": (lambda a: dict(g=torch.zeros(1, 10, 4, dtype=torch.long)), r"g must be a float tensor"),
    "unknown_backend": (lambda a: dict(backend="cuda"), r"backend='cuda' is not one of"),
    "fla_on_cpu": (lambda a: dict(backend="fla"), r"backend='fla' needs CUDA"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise(case):
    changes, match = BAD[case]
    kwargs = _bad(**changes(_bad()))
    q, k, v, g, beta = (kwargs.pop(n) for n in ("q", "k", "v", "g", "beta"))
    with pytest.raises(ValueError, match=match):
        chunk_gated_delta_rule(q, k, v, g, beta, **kwargs)


def test_fp32_gates_with_bf16_qkv_are_accepted():
    """Qwen3.5 computes g in fp32 while q/k/v/beta are bf16; FLA accepts that, so do we."""
    args = _bad(**{n: _bad()[n].bfloat16() for n in ("q", "k", "v", "beta")})
    q, k, v, g, beta = (args.pop(n) for n in ("q", "k", "v", "g", "beta"))
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, **args, output_final_state=True, backend="torch")
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32


def test_host_offsets_accepted():
    """cu_seqlens_cpu (a tensor, as in FLA, or PackedBatch.cu_seqlens_host) spares the host read."""
    args = _bad()
    q, k, v, g, beta = (args.pop(n) for n in ("q", "k", "v", "g", "beta"))
    ref, _ = chunk_gated_delta_rule(q, k, v, g, beta, **args)
    for host in (args["cu_seqlens"].clone(), (0, 3, 4, 10)):
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, **args, cu_seqlens_cpu=host)
        assert torch.equal(o, ref)


def test_gate_in_kernel_equals_the_decay_and_sigmoid_given_outside():
    """FLA's use_gate_in_kernel / use_beta_sigmoid_in_kernel, on the torch backend: the same formula applied
    inside the op (transformers' Qwen3.5 layer computes g = -exp(A_log) * softplus(a + dt_bias) in fp32)."""
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.nn.functional.normalize(torch.randn(1, 50, 2, 16, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(1, 50, 4, 16, generator=gen)
    a, b = torch.randn(1, 50, 4, generator=gen), torch.randn(1, 50, 4, generator=gen)
    A_log, dt_bias = torch.randn(4, generator=gen), torch.randn(4, generator=gen)
    cu = torch.tensor([0, 7, 8, 50], dtype=torch.int32)
    g = -A_log.exp() * torch.nn.functional.softplus(a + dt_bias)
    expected, _ = chunk_gated_delta_rule(q, k, v, g, b.sigmoid(), cu_seqlens=cu, backend="torch")
    fused, _ = chunk_gated_delta_rule(q, k, v, a, b, cu_seqlens=cu, backend="torch", use_gate_in_kernel=True,
                                      A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True)  # fmt: skip
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs A_log"):
        chunk_gated_delta_rule(q, k, v, a, b, cu_seqlens=cu, backend="torch", use_gate_in_kernel=True)
    with pytest.raises(ValueError, match=r"A_log must be a float tensor of shape \[HV\] = \[4\]"):
        chunk_gated_delta_rule(q, k, v, a, b, cu_seqlens=cu, backend="torch", use_gate_in_kernel=True,
                               A_log=torch.randn(2))  # fmt: skip
    with pytest.raises(ValueError, match="without use_gate_in_kernel=True"):
        chunk_gated_delta_rule(q, k, v, g, b, cu_seqlens=cu, backend="torch", A_log=A_log)


def test_fla_fixed_shape_calls_go_below_flas_dispatch():
    """padfree's FLA backend sends the fixed-shape rows (CUDA graph steps) that FlashQLA does not take to FLA's
    function below its backend dispatch (padfree.ops.gated_delta.fla_backend).
    FLA 0.6 stacks torch.compiler.disable, the dispatch wrapper and the function, linked by functools.wraps;
    this builds the same stack (FLA itself needs a GPU) and checks the unwrapped function is the innermost."""
    from padfree.ops.gated_delta.fla_backend import without_dispatch

    def kernels(x):
        return x + 1

    @functools.wraps(kernels)
    def dispatch(x):
        return "another backend"

    public = torch.compiler.disable(torch.compiler.disable(dispatch))
    assert public(1) == "another backend"
    assert without_dispatch(public)(1) == 2


FLASH_QLA_BACKEND = "fla.ops.gated_delta_rule.backends.flash_qla"  # FLA 0.6's module of its FlashQLA backend


def test_fla_without_a_flash_qla_backend_never_takes_that_route(monkeypatch):
    """An FLA release without the FlashQLA backend module: fixed-shape rows go to FLA's own kernels (no ImportError
    in the middle of a step)."""
    import sys

    from padfree.ops import _backend
    from padfree.ops.gated_delta.fla_backend import flash_qla_takes

    monkeypatch.setattr(_backend, "fla_available", lambda: True)  # FLA "installed", its backend module not
    monkeypatch.setitem(sys.modules, FLASH_QLA_BACKEND, None)  # import raises
    q = torch.zeros(1, 4, 1, 128)
    assert flash_qla_takes(q, q, q, q[..., 0], q[..., 0], None, {}) is False


def test_flash_qla_dispatch_is_reported_as_fla_decides_it(monkeypatch):
    """`padfree check` and `padfree bench` say when FLA hands the op to FlashQLA by asking FLA's own FlashQLA backend
    (installed and enabled: FLA_FLASH_QLA, read per call), never restating its rule; False without FLA."""
    import sys
    import types

    from padfree.ops import _backend

    answers = {"installed": True, "enabled": True}

    class FlashQLABackend:  # FLA's class, as padfree uses it
        @classmethod
        def is_available(cls) -> bool:
            return answers["installed"]

        def is_enabled(self) -> bool:
            return answers["enabled"]

    module = types.ModuleType(FLASH_QLA_BACKEND)
    module.FlashQLABackend = FlashQLABackend
    monkeypatch.setitem(sys.modules, FLASH_QLA_BACKEND, module)
    monkeypatch.setattr(_backend, "fla_available", lambda: False)
    assert not _backend.flash_qla_dispatched()  # no FLA: nothing dispatches
    monkeypatch.setattr(_backend, "fla_available", lambda: True)
    assert _backend.flash_qla_dispatched()
    answers["enabled"] = False  # FLA_FLASH_QLA=0
    assert not _backend.flash_qla_dispatched()
    answers.update(installed=False, enabled=True)  # flash_qla not installed
    assert not _backend.flash_qla_dispatched()
