"""padfree.ops.fla_offsets: the offsets tensors FLA receives (FLA memoises by tensor identity)."""

import torch

from padfree.ops.fla_offsets import fla_offsets


def test_equal_offsets_share_objects_and_never_alias_the_callers_tensor():
    caller = torch.tensor([0, 3, 7, 12], dtype=torch.int32)
    device_a, host_a = fla_offsets(caller, caller.tolist())
    device_b, host_b = fla_offsets(caller.clone(), (0, 3, 7, 12))
    # Same values: the same two objects, so FLA's identity cache hits on every layer of a row.
    assert device_a is device_b and host_a is host_b
    assert device_a is not caller
    assert device_a.dtype == torch.int32 and host_a.dtype == torch.int64
    assert device_a.tolist() == host_a.tolist() == [0, 3, 7, 12]
    # The caller editing its tensor in place cannot leak into what FLA holds.
    caller[1] = 2
    assert device_a.tolist() == [0, 3, 7, 12]


def test_different_offsets_or_dtype_get_their_own_tensors():
    device_a, _ = fla_offsets(torch.tensor([0, 3, 7]), (0, 3, 7))
    device_b, _ = fla_offsets(torch.tensor([0, 2, 7]), (0, 2, 7))
    device_c, _ = fla_offsets(torch.tensor([0, 3, 7], dtype=torch.int32), (0, 3, 7))
    assert device_b.tolist() == [0, 2, 7] and device_a.tolist() == [0, 3, 7]
    assert device_c.dtype == torch.int32 and device_a.dtype == torch.int64
    assert device_a is not device_c


def test_without_host_offsets_fla_gets_a_fresh_clone():
    caller = torch.tensor([0, 5], dtype=torch.int32)
    device, host = fla_offsets(caller, None)
    assert host is None and device is not caller and torch.equal(device, caller)
