"""padfree: padding-free (packed-sequence) training of Qwen3.5-family hybrid models."""

from padfree.varlen import PackedBatch, packed_from_cu_seqlens, packed_from_lengths, packed_from_position_ids

__all__ = ["PackedBatch", "packed_from_cu_seqlens", "packed_from_lengths", "packed_from_position_ids"]
__version__ = "0.1.0"
