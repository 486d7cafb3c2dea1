"""padfree.parallel.grad_reduce's layout and refusals, in one process (a one-rank gloo group, where the sum is the
identity). Its sums over two ranks against the unsharded model: tests/parallel/test_sequence_parallel.py."""

from __future__ import annotations

import pytest
import torch

from padfree.parallel.grad_reduce import OverlappedGradReduce, overlapped_grad_reduce


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5, bias=False))
    model[0].bias.requires_grad_(False)  # frozen: no view, no hook
    return model


def _reference_grads(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def test_every_grad_is_an_aligned_view_laid_out_in_backward_order(one_rank_group):
    model = _model()
    x = torch.randn(4, 7)
    reference = _reference_grads(model, x)
    reduce = OverlappedGradReduce(model.parameters(), one_rank_group, bucket_mb=5 * 33 * 4 / 2**20)
    (buffer,) = reduce.buffers
    trained = [p for p in model.parameters() if p.requires_grad]
    assert model[0].bias.grad is None
    offsets = [p.grad.data_ptr() - buffer.data_ptr() for p in trained]
    assert all(offset % 128 == 0 for offset in offsets), offsets
    assert offsets == sorted(offsets, reverse=True), "the last layer's gradient must come first in the buffer"
    assert len(reduce.buckets) == 2  # the last layer's weight fills the first bucket by itself
    reduce.arm()
    model(x).square().sum().backward()
    assert reduce.launched_during_backward == 2
    reduce.finish()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, reference[name], rtol=0, atol=0)
    assert [p.grad.data_ptr() - buffer.data_ptr() for p in trained] == offsets, "autograd must accumulate in place"


def test_install_keeps_values_and_survives_set_to_none(one_rank_group):
    model = _model()
    x = torch.randn(4, 7)
    model(x).sum().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    reduce = OverlappedGradReduce(model.parameters(), one_rank_group)
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p.grad, before[name])
    model.zero_grad(set_to_none=True)
    reduce.arm()  # reinstalls the views, zeroed
    model(x).sum().backward()
    reduce.finish()
    assert all(
        reduce.buffers[0].data_ptr() <= p.grad.data_ptr() < reduce.buffers[0].data_ptr() + reduce.buffers[0].nbytes
        for p in model.parameters() if p.requires_grad
    )  # fmt: skip
    for name, p in model.named_parameters():
        if name in before:
            torch.testing.assert_close(p.grad, before[name])


def test_prescale_divides_by_the_group_size_and_zero_clears(one_rank_group):
    model = _model()
    reduce = OverlappedGradReduce(model.parameters(), one_rank_group)
    reduce.buffers[0].fill_(3.0)
    reduce.prescale()
    assert torch.all(reduce.buffers[0] == 3.0)  # size 1
    reduce.size = 4  # what a 4-rank group would divide by
    reduce.prescale()
    assert torch.all(reduce.buffers[0] == 0.75)
    reduce.zero_()
    assert not reduce.buffers[0].any()


def test_refusals(one_rank_group):
    model = _model()
    with pytest.raises(ValueError, match="bucket_mb=0"):
        OverlappedGradReduce(model.parameters(), one_rank_group, bucket_mb=0)
    reduce = OverlappedGradReduce(model.parameters(), one_rank_group)
    with pytest.raises(RuntimeError, match="finish\\(\\) without arm\\(\\)"):
        reduce.finish()
    reduce.arm()
    reduce._on_grad(model[2].weight)
    with pytest.raises(RuntimeError, match="accumulated twice in one backward"):
        reduce._on_grad(model[2].weight)


def test_hooks_do_nothing_outside_arm_and_one_reducer_per_model_and_group(one_rank_group):
    model = _model()
    reduce = overlapped_grad_reduce(model, one_rank_group)
    assert overlapped_grad_reduce(model, one_rank_group) is reduce
    model(torch.randn(2, 7)).sum().backward()  # not armed: accumulates, launches nothing
    assert reduce.launched_during_backward == 0 and not reduce._works
    reduce.remove()
    assert not reduce._hooks

