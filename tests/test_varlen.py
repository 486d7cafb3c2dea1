"""Packed-batch metadata: built from lengths, cu_seqlens or position_ids; malformed input rejected."""

from __future__ import annotations

import pytest
import torch

from padfree.varlen import packed_from_cu_seqlens, packed_from_lengths, packed_from_position_ids


def test_from_lengths():
    packed = packed_from_lengths([3, 1, 5])
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.cu_seqlens.tolist() == [0, 3, 4, 9]
    assert packed.cu_seqlens_host == (0, 3, 4, 9)
    assert (packed.max_seqlen, packed.num_docs, packed.total_len) == (5, 3, 9)


def test_from_position_ids_matches_lengths():
    positions = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 3, 4]])
    packed = packed_from_position_ids(positions)
    assert packed.cu_seqlens_host == packed_from_lengths([3, 1, 5]).cu_seqlens_host


@pytest.mark.parametrize(
    "positions, message",
    [
        ([[1, 2, 3]], "must start at 0"),
        ([[0, 1, 3, 0]], "jump from 1 to 3 at token 2"),
        ([[0, 1, 2, 1, 2]], "jump from 2 to 1 at token 3"),
        ([[0, 1], [0, 1]], "batch size 1"),
    ],
)
def test_malformed_position_ids(positions, message):
    with pytest.raises(ValueError, match=message):
        packed_from_position_ids(torch.tensor(positions))


@pytest.mark.parametrize(
    "offsets, total, message",
    [
        ([0, 3, 3, 5], 5, "strictly increasing"),
        ([0, 4, 2, 5], 5, "strictly increasing"),
        ([0, 3, 5], 6, "ends at 5 but the row has 6 tokens"),
        ([1, 3, 5], 5, "must start at 0"),
    ],
)
def test_malformed_cu_seqlens(offsets, total, message):
    with pytest.raises(ValueError, match=message):
        packed_from_cu_seqlens(torch.tensor(offsets, dtype=torch.int32), total)


def test_lengths_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        packed_from_lengths([3, 0, 2])
