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


def _flash_qla_spy(monkeypatch, refuse: bool = False) -> list:
    """Record (or refuse) the calls FLA's dispatch makes to FlashQLA; skips where flash_qla is not installed."""
    flash_qla = pytest.importorskip("flash_qla")
    calls, original = [], flash_qla.chunk_gated_delta_rule

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seqlens"))
        if refuse:
            raise AssertionError("a fixed-shape row reached FlashQLA")
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


def test_fixed_shape_rows_bypass_flash_qla(monkeypatch):
    """With flash_qla installed FLA hands the op to FlashQLA, which plans on the host from the offsets' values:
    a CUDA graph step's fixed-shape row (chunk_indices given, offsets trusted) must reach FLA's own kernels
    instead (padfree.ops.gated_delta.fla_backend). Same result as FLA's own kernels on the unpadded offsets."""
    from padfree.static_row import chunk_slots, chunk_table, padded_offsets

    if not fla_available() or fla_unsafe_reason(0):
        pytest.skip("FLA not usable on this GPU")
    calls = _flash_qla_spy(monkeypatch, refuse=True)
    monkeypatch.setenv("FLA_FLASH_QLA", "1")  # FLA's dispatch on (its default), whatever the environment says
    q, k, v, g, beta, _ = (x.detach().cuda() for x in _inputs(LENGTHS, dtype=torch.bfloat16, K=HEAD_DIM, V=HEAD_DIM))
    offsets = _cu(LENGTHS).tolist()
    max_docs = len(LENGTHS) + 2
    padded = padded_offsets(offsets, max_docs)
    table = chunk_table(padded, chunk_slots(offsets[-1], max_docs))
    cu_fixed = torch.tensor(padded, dtype=torch.int32, device="cuda")
    fixed, _ = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu_fixed, use_qk_l2norm_in_kernel=True,
                                      chunk_indices=torch.tensor(table, dtype=torch.int32, device="cuda"),
                                      backend="fla")  # fmt: skip
    assert calls == []
    monkeypatch.setenv("FLA_FLASH_QLA", "0")
    own, _ = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=_cu(LENGTHS).cuda(), use_qk_l2norm_in_kernel=True,
                                    backend="fla")  # fmt: skip
    assert len(LENGTHS) > 1 and padded[-1] == padded[-2]  # several documents, then empty ones
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
