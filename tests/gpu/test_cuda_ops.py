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


@pytest.mark.parametrize("backend", ["torch", "fla"])
def test_cuda_backend_matches_the_fp32_oracle(backend):
    if backend == "fla" and (not fla_available() or fla_unsafe_reason(0)):
        pytest.skip("FLA not usable on this GPU")
    leaves = _inputs(LENGTHS, dtype=torch.bfloat16)
    cu = _cu(LENGTHS)
    reference = _run("naive", [x.float() for x in leaves], cu, "cpu")
    actual = _run(backend, leaves, cu, "cuda")
    for name, ref, out in zip(NAMES, reference, actual):
        assert_close(f"{backend} {name}", ref, out, BOUND, BF16_WHY)


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
