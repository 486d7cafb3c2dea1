"""padfree: padding-free (packed-sequence) training of Qwen3.5-family hybrid models.

    import padfree
    padfree.patch(model)                       # Qwen3.5 / Qwen3.5-MoE / Qwen3-Next causal LM
    batch = padfree.collate(samples)           # one packed row with its document boundaries
    loss = model(**batch).loss                 # every layer keeps the documents apart

On CUDA with FLA, `padfree.CudaGraphTrainStep(model, optimizer, row_tokens, max_docs)` captures the
whole step in a CUDA graph and replays it per row (2.3x upstream's packed step at 0.8B, H100).
"""

from padfree.collate import collate
from padfree.cuda_graph import CudaGraphTrainStep
from padfree.loss import causal_lm_loss, chunked_linear_cross_entropy, count_trained_tokens, per_token_logprobs
from padfree.models import is_patched, patch, unpatch
from padfree.packing import PackingPlan, PackingStats, pack
from padfree.packing_stream import pack_stream
from padfree.varlen import PackedBatch, packed_from_cu_seqlens, packed_from_lengths, packed_from_position_ids

__all__ = [
    "CudaGraphTrainStep",
    "PackedBatch",
    "PackingPlan",
    "PackingStats",
    "causal_lm_loss",
    "chunked_linear_cross_entropy",
    "collate",
    "count_trained_tokens",
    "pack",
    "pack_stream",
    "per_token_logprobs",
    "is_patched",
    "packed_from_cu_seqlens",
    "packed_from_lengths",
    "packed_from_position_ids",
    "patch",
    "unpatch",
]
__version__ = "0.1.0"
