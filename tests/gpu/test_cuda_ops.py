"""On CUDA: the torch and FLA backends of the gated delta rule against the fp32 CPU oracle.

Skipped without CUDA (and the FLA case without a usable FLA). Inputs are bf16, as in training; the
oracle runs in fp32 on the same bf16-rounded inputs, so the bound (BF16 in the CPU tests, with its
derivation) covers rounding of the output and of each gradient. Every output, final state and
input gradient is compared, on a row of documents whose boundaries are off the chunk edges.
"""

from __future__ import annotations

import pytest
import torch

from padfree.ops._backend import fla_available, fla_unsafe_reason
from padfree.ops.gated_delta import chunk_gated_delta_rule
from tests.helpers import assert_close
from tests.ops.test_gated_delta import BF16_WHY, _cu, _inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LENGTHS = [1, 63, 65, 130, 7, 300, 2]
NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
BOUND = 1e-2  # FLA keeps some intermediates in bf16 too: a few more roundings than the CPU bf16 case
HEAD_DIM = 128  # the family's GDN head dims, the only ones FlashQLA takes (FLA dispatches other shapes to its own)


def _run(backend, leaves, cu, device):
    leaves = [x.detach().to(device).requires_grad_() for x in leaves]
    q, k, v, g, beta, h0 = leaves
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                   cu_seqlens=cu.to(device), use_qk_l2norm_in_kernel=True, backend=backend)
    gen = torch.Generator().manual_seed(7)
    do = torch.randn(o.shape, generator=gen).to(device, o.dtype)
    dht = torch.randn(ht.shape, generator=gen).to(device, ht.dtype)
    ((o * do).float().sum() + (ht * dht).sum()).backward()
    return [o.float().cpu(), ht.float().cpu()] + [x.grad.float().cpu() for x in leaves]


def _flash_qla_spy(monkeypatch, refuse: bool = False) -> list[dict]:
    """Record (or refuse) the calls that reach FlashQLA (their keyword arguments); skips where flash_qla is not
    installed."""
    flash_qla = pytest.importorskip("flash_qla")
    calls, original = [], flash_qla.chunk_gated_delta_rule

    def spy(*args, **kwargs):
        calls.append(kwargs)
        if refuse:
            raise AssertionError("this call should not have reached FlashQLA")
        return original(*args, **kwargs)

    monkeypatch.setattr(flash_qla, "chunk_gated_delta_rule", spy)
    return calls


@pytest.mark.parametrize("backend", ["torch", "fla", "fla_flash_qla"])
def test_cuda_backend_matches_the_fp32_oracle(backend, monkeypatch):
    """"fla" pins FLA's own kernels (FLA_FLASH_QLA=0); "fla_flash_qla" lets FLA dispatch to FlashQLA, what
    it does whenever the flash_qla package is installed, and checks that it did."""
    if backend != "torch" and (not fla_available() or fla_unsafe_reason(0)):
        pytest.skip("FLA not usable on this GPU")
    monkeypatch.setenv("FLA_FLASH_QLA", "1" if backend == "fla_flash_qla" else "0")  # FLA reads it per call
    calls = _flash_qla_spy(monkeypatch) if backend == "fla_flash_qla" else []
    leaves = _inputs(LENGTHS, dtype=torch.bfloat16, K=HEAD_DIM, V=HEAD_DIM)
    cu = _cu(LENGTHS)
    reference = _run("naive", [x.float() for x in leaves], cu, "cpu")
    actual = _run(backend.removesuffix("_flash_qla"), leaves, cu, "cuda")
    assert len(calls) == (1 if backend == "fla_flash_qla" else 0)
    for name, ref, out in zip(NAMES, reference, actual):
        assert_close(f"{backend} {name}", ref, out, BOUND, BF16_WHY)


def _fixed_row(lengths, max_docs):
    """A fixed-shape row's offsets and chunk table, as padfree.static_row.StaticRow fills them."""
    from padfree.static_row import chunk_slots, chunk_table, padded_offsets

    padded = padded_offsets(_cu(lengths).tolist(), max_docs)
    table = chunk_table(padded, chunk_slots(sum(lengths), max_docs))
    return torch.tensor(padded, dtype=torch.int32), torch.tensor(table, dtype=torch.int32)


# rows of one length (568 tokens): many documents, one, two, and short ones before a long one
GRAPH_ROWS = [LENGTHS, [568], [200, 368], [1] * 8 + [560]]
GRAPH_NAMES = ["o", "dq", "dk", "dv", "dg", "dbeta"]


def _oracle(values, do, lengths):
    """The fp32 per-token oracle on the CPU: o and the five input gradients for upstream gradient `do`."""
    leaves = [x.detach().float().requires_grad_() for x in values]
    o, _ = chunk_gated_delta_rule(*leaves, cu_seqlens=_cu(lengths), use_qk_l2norm_in_kernel=True, backend="naive")
    return [o.detach(), *torch.autograd.grad(o, leaves, do.float())]


def test_fixed_shape_rows_run_flash_qla_under_a_cuda_graph(monkeypatch):
    """A CUDA-graph step's fixed-shape row (empty documents after the real ones, chunk table given, offsets never
    read on the host) runs FlashQLA's kernels without its context parallelism, with the plan made on the device
    (padfree.ops.gated_delta.fla_backend). Forward and backward are captured once, then replayed on rows of other
    documents: each replay matches the fp32 oracle on that row's own offsets, and the plan FlashQLA read matches
    the one FlashQLA itself builds from a host copy (flash_qla.utils.index.prepare_varlen_metadata)."""
    if not fla_available() or fla_unsafe_reason(0):
        pytest.skip("FLA not usable on this GPU")
    calls = _flash_qla_spy(monkeypatch)
    monkeypatch.setenv("FLA_FLASH_QLA", "1")  # FLA's dispatch on (its default), whatever the environment says
    from flash_qla.utils.index import prepare_varlen_metadata

    max_docs, T = max(len(row) for row in GRAPH_ROWS), sum(GRAPH_ROWS[0])
    assert all(sum(row) == T for row in GRAPH_ROWS)
    cu_buffer, table_buffer = (x.cuda() for x in _fixed_row(GRAPH_ROWS[0], max_docs))
    leaves = [x.detach().cuda().requires_grad_() for x in _inputs(GRAPH_ROWS[0], dtype=torch.bfloat16, K=HEAD_DIM,
                                                                   V=HEAD_DIM, h0=False)[:5]]  # fmt: skip
    do = torch.zeros_like(leaves[2])

    def load(lengths, seed):
        """Copy a row into the fixed buffers; return its inputs and upstream gradient on the host."""
        values = _inputs(lengths, dtype=torch.bfloat16, K=HEAD_DIM, V=HEAD_DIM, h0=False, seed=seed)[:5]
        gradient = torch.randn(do.shape, generator=torch.Generator().manual_seed(seed)).to(do.dtype)
        for buffer, host in zip([cu_buffer, table_buffer, *leaves, do], [*_fixed_row(lengths, max_docs), *values,
                                                                          gradient]):  # fmt: skip
            buffer.detach().copy_(host)
        return values, gradient

    def step():
        o, _ = chunk_gated_delta_rule(*leaves, cu_seqlens=cu_buffer, chunk_indices=table_buffer,
                                      use_qk_l2norm_in_kernel=True, backend="fla")  # fmt: skip
        return [o, *torch.autograd.grad(o, leaves, do)]

    load(GRAPH_ROWS[0], seed=0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: TileLang compiles, allocator pools fill
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    assert len(calls) == 2 and all(call["auto_cp"] is False for call in calls)
    captured_offsets = calls[-1]["cu_seqlens"]
    assert captured_offsets is not cu_buffer  # padfree's own clone carries the plan

    for seed, lengths in enumerate(GRAPH_ROWS[1:] + GRAPH_ROWS[:1], start=1):
        values, gradient = load(lengths, seed)
        graph.replay()
        torch.cuda.synchronize()
        expected = prepare_varlen_metadata(cu_buffer.clone(), cu_buffer.cpu())._flash_qla_prepared_varlen
        plan = captured_offsets._flash_qla_prepared_varlen
        assert plan[0] == expected[0] and torch.equal(plan[1].cpu(), expected[1].cpu())
        assert plan[2] == table_buffer.shape[0] >= expected[2]  # the table's slots bound the real chunk count
        assert torch.equal(plan[3][: expected[2]].cpu(), expected[3].cpu())
        for name, ref, out in zip(GRAPH_NAMES, _oracle(values, gradient, lengths), outputs):
            assert_close(f"replay on {len(lengths)} documents {name}", ref, out.float().cpu(), BOUND, BF16_WHY)
    assert len(calls) == 2  # replays run no Python


def test_fixed_shape_rows_that_flash_qla_refuses_run_flas_own_kernels(monkeypatch):
    """FLA's verifier refuses FlashQLA for its in-kernel gate: a fixed-shape row then runs FLA's own kernels below
    its dispatch (never FlashQLA's host-planned path), with the results FLA's own kernels give on the unpadded row."""
    if not fla_available() or fla_unsafe_reason(0):
        pytest.skip("FLA not usable on this GPU")
    calls = _flash_qla_spy(monkeypatch, refuse=True)
    monkeypatch.setenv("FLA_FLASH_QLA", "1")
    q, k, v, a, beta = (x.detach().cuda() for x in _inputs(LENGTHS, dtype=torch.bfloat16, K=HEAD_DIM, V=HEAD_DIM)[:5])
    HV = v.shape[2]
    gate = dict(use_gate_in_kernel=True, A_log=torch.linspace(-2, 1, HV, device="cuda"),
                dt_bias=torch.linspace(-1, 1, HV, device="cuda"))  # fmt: skip
    max_docs = len(LENGTHS) + 2
    cu_fixed, table = (x.cuda() for x in _fixed_row(LENGTHS, max_docs))
    fixed, _ = chunk_gated_delta_rule(q, k, v, a, beta, cu_seqlens=cu_fixed, chunk_indices=table,
                                      use_qk_l2norm_in_kernel=True, backend="fla", **gate)  # fmt: skip
    assert calls == []
    monkeypatch.setenv("FLA_FLASH_QLA", "0")
    own, _ = chunk_gated_delta_rule(q, k, v, a, beta, cu_seqlens=_cu(LENGTHS).cuda(), use_qk_l2norm_in_kernel=True,
                                    backend="fla", **gate)  # fmt: skip
    assert len(LENGTHS) > 1 and cu_fixed[-1] == cu_fixed[-2]  # several documents, then empty ones
    assert_close("fixed-shape row vs FLA's own kernels", own.float(), fixed.float(), 1e-6, "the same kernels")


def test_row_offsets_reach_the_gpu_without_a_stream_sync():
    """PackedBatch.to copies the offsets from pinned memory, asynchronously: with torch's sync debug
    mode set to "error", a blocking copy (what `.to(device)` of a pageable tensor does) would raise."""
    from padfree.varlen import packed_from_lengths

    packed = packed_from_lengths([5, 1, 17, 9])
    busy = torch.randn(4096, 4096, device="cuda")
    busy @ busy  # queued work that a synchronising copy would wait for
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = packed.to("cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu.cu_seqlens.device.type == "cuda"
    assert on_gpu.cu_seqlens.tolist() == list(packed.cu_seqlens_host) == [0, 5, 6, 23, 32]
