"""On CUDA: padfree's own Triton conv kernels (padfree.ops.conv1d.triton_kernels) against the naive oracle.

Skipped without CUDA. The oracle (padfree.ops.conv1d.naive: one F.conv1d per document, fp32) gets the same
inputs, upcast. Bounds:
- fp32 inputs: 1e-5 RMS-relative; only the order of the W-term sums differs (~1e-7).
- bf16 inputs: the kernels accumulate in fp32 from the same bf16 values as the oracle, then round once to
  the output's dtype: y within 2^-8 (one bf16 rounding to nearest: at most 2^-8 relative). dx is rounded
  twice, as PyTorch's own bf16 backward rounds it: dz = dy * silu'(z) is kept in bf16 between the backward's
  two passes, then dx = sum_s w_s dz[t + s] is rounded: within 2^-7. The fp32 weight's and bias's gradients,
  summed over all tokens in fp32 (from the fp32 dz) in another order, within 1e-4.
Also: the kernels captured in a CUDA graph follow offsets that change between replays, empty documents at
the row's end included (the fixed-shape rows of padfree.cuda_graph); and with `split_sizes` the forward writes
its parts (q, k, v) itself and the backward takes their gradients, None for an unused part: the same values as
the unsplit call (y and dx are the same fp32 sums per element; the weight's and bias's per-tile sums may take
another reduction order under another autotuned configuration: within 1e-6 in fp32).
"""

from __future__ import annotations

import pytest
import torch

from padfree.ops.conv1d import conv_backend, naive
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
triton_kernels = pytest.importorskip("padfree.ops.conv1d.triton_kernels", reason="needs Triton (PyTorch's CUDA wheels)")
DEVICE = "cuda"
CASES = {  # lengths (0: an empty document), channels, width, bias, activation
    "mixed": ([70, 1, 17, 3, 130, 2], 150, 4, True, "silu"),
    "tile_edges": ([63, 1, 64, 65, 1, 1], 64, 4, False, None),
    "empty_documents_at_the_end": ([40, 100, 5, 0, 0, 0], 96, 4, True, "silu"),
    "width_3": ([9, 2, 50], 33, 3, True, "silu"),
    "many_documents": ([1, 2, 3, 1] * 60 + [300], 128, 4, True, "silu"),  # > one 128-offset block
}


def _bound(name: str, dtype: torch.dtype) -> tuple[float, str]:
    """(RMS-relative bound, why) of one output against the fp32 oracle: the module docstring's bounds."""
    if dtype == torch.bfloat16 and name == "y":
        return 2.0**-8, "bf16 output: one rounding"
    if dtype == torch.bfloat16 and name == "dx":
        return 2.0**-7, "bf16 dx: two roundings (dz, then dx)"
    return (1e-4 if dtype == torch.bfloat16 else 1e-5), "fp32 sums"


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)


def _reference(x, w, b, activation, cu_seqlens, dy):
    """The oracle's y and gradients, in fp32 from the same values (empty documents dropped: they hold nothing)."""
    leaves = [t.detach().float().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    offsets = None if cu_seqlens is None else torch.unique_consecutive(cu_seqlens)
    y, _ = naive.causal_conv1d(leaves[0], leaves[1], leaves[2] if b is not None else None, activation, None, False,
                               offsets)  # fmt: skip
    grads = torch.autograd.grad(y, leaves, dy.float())
    return [y.detach(), *grads]


def _ours(x, w, b, activation, cu_seqlens, dy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    # the kernels' entry point: the op's host checks (CPU-tested) refuse the empty documents a fixed-shape row ends in
    y = triton_kernels.causal_conv1d(leaves[0], leaves[1], leaves[2] if b is not None else None, activation, cu_seqlens)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_conv_matches_the_oracle(case, dtype):
    lengths, D, W, has_bias, activation = CASES[case]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    T = sum(lengths)
    assert sum(n > 0 for n in lengths) >= 3  # several documents, so boundaries are crossed
    x = torch.randn(1, T, D, device=DEVICE, generator=gen).to(dtype)
    w = torch.randn(D, W, device=DEVICE, generator=gen) * 0.5  # fp32 weights, as Qwen3.5 trains them
    b = torch.randn(D, device=DEVICE, generator=gen) if has_bias else None
    dy = torch.randn(1, T, D, device=DEVICE, generator=gen).to(dtype)
    cu = _offsets(lengths)
    reference = _reference(x, w, b, activation, cu, dy)
    ours = _ours(x, w, b, activation, cu, dy)
    names = ["y", "dx", "dweight", "dbias"][: len(ours)]
    for name, r, o in zip(names, reference, ours):
        assert_close(f"{case} {name}", r, o, *_bound(name, dtype))


SPLITS = {  # case -> split_sizes: widths off every block size (32, 64, 128), so blocks end inside parts
    "mixed": [37, 37, 76],
    "tile_edges": [16, 16, 32],
    "empty_documents_at_the_end": [20, 20, 56],
    "width_3": [1, 1, 31],
}


def _split_grads(parts, leaves, dy, split_sizes, unused):
    """y (parts concatenated) and the leaves' gradients, with part `unused` left out of the graph (None)."""
    used = [i for i in range(len(parts)) if i != unused]
    dys = dy.split(split_sizes, -1)
    grads = torch.autograd.grad([parts[i] for i in used], leaves, [dys[i] for i in used])
    return [torch.cat([p.detach() for p in parts], -1), *grads]


@pytest.mark.parametrize("unused", [None, 0, 1, 2], ids=["all_used", "q_unused", "k_unused", "v_unused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(SPLITS))
def test_triton_split_outputs_match_the_oracle_and_the_unsplit_call(case, dtype, unused):
    lengths, D, W, has_bias, activation = CASES[case]
    split_sizes = SPLITS[case]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    T = sum(lengths)
    x = torch.randn(1, T, D, device=DEVICE, generator=gen).to(dtype)
    w = torch.randn(D, W, device=DEVICE, generator=gen) * 0.5
    b = torch.randn(D, device=DEVICE, generator=gen) if has_bias else None
    dy = torch.randn(1, T, D, device=DEVICE, generator=gen).to(dtype)
    if unused is not None:  # what the unsplit call and the oracle see for a part nobody reads
        dy[..., sum(split_sizes[:unused]) : sum(split_sizes[: unused + 1])] = 0
    cu = _offsets(lengths)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    parts = triton_kernels.causal_conv1d(*leaves[:2], leaves[2] if b is not None else None, activation, cu,
                                         split_sizes)  # fmt: skip
    assert [tuple(p.shape) for p in parts] == [(1, T, d) for d in split_sizes]
    assert all(p.is_contiguous() for p in parts)
    ours = _split_grads(parts, leaves, dy, split_sizes, unused)
    unsplit = _ours(x, w, b, activation, cu, dy)
    reference = _reference(x, w, b, activation, cu, dy)
    names = ["y", "dx", "dweight", "dbias"][: len(ours)]
    for name, r, u, o in zip(names, reference, unsplit, ours):
        assert_close(f"{case} {name}", r, o, *_bound(name, dtype))
        if name in ("y", "dx"):
            assert_close(f"{case} {name} (unsplit)", u, o, 0.0, "the same fp32 sums per element: exact")
        else:
            assert_close(f"{case} {name} (unsplit)", u, o, 1e-6, "per-tile sums, maybe another reduction order")


def test_triton_conv_without_offsets_treats_each_batch_row_as_a_document():
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.randn(3, 37, 40, device=DEVICE, generator=gen)
    w, b = torch.randn(40, 4, device=DEVICE, generator=gen), torch.randn(40, device=DEVICE, generator=gen)
    dy = torch.randn_like(x)
    reference = _reference(x, w, b, "silu", None, dy)
    for name, r, o in zip(["y", "dx", "dweight", "dbias"], reference, _ours(x, w, b, "silu", None, dy)):
        assert_close(name, r, o, 1e-5, "fp32 sums")


@pytest.mark.parametrize("split_sizes", [None, [20, 20, 56]], ids=["whole", "split"])
def test_triton_conv_in_a_cuda_graph_follows_changing_offsets(split_sizes):
    D, W, T = 96, 4, 300
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    x = torch.randn(1, T, D, device=DEVICE, generator=gen, requires_grad=True)
    w = torch.randn(D, W, device=DEVICE, generator=gen, requires_grad=True)
    b = torch.randn(D, device=DEVICE, generator=gen, requires_grad=True)
    dy = torch.randn(1, T, D, device=DEVICE, generator=gen)
    layouts = [[100, 200, 0, 0], [1, 1, 3, 295], [300, 0, 0, 0], [7, 50, 60, 183]]  # 4 documents' slots each
    offsets = _offsets(layouts[0])

    def conv():  # y, its parts concatenated with split_sizes (a copy outside the kernels, for the comparison)
        if split_sizes is None:
            y = triton_kernels.causal_conv1d(x, w, b, "silu", offsets)
            y.backward(dy)
            return y
        parts = triton_kernels.causal_conv1d(x, w, b, "silu", offsets, split_sizes)
        torch.autograd.backward(parts, dy.split(split_sizes, -1))
        return torch.cat([p.detach() for p in parts], -1)

    def step():
        x.grad = w.grad = b.grad = None
        return conv()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles and autotunes outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = w.grad = b.grad = None
    with torch.cuda.graph(graph):
        y = conv()
    for lengths in layouts[1:]:
        offsets.copy_(_offsets(lengths))
        graph.replay()
        reference = _reference(x, w, b, "silu", offsets, dy)
        for name, r, o in zip(["y", "dx", "dweight", "dbias"], reference, [y, x.grad, w.grad, b.grad]):
            assert_close(f"{split_sizes} {lengths} {name}", r, o, 1e-5, "fp32 sums")


def test_auto_picks_the_triton_conv_on_cuda_without_states():
    device = torch.device(DEVICE)
    assert conv_backend("auto", device) == "triton"
    assert conv_backend("auto", device, with_states=True) != "triton"  # FLA's kernel (or torch) takes the states
