"""Dispatch of a token mixer on a sequence-parallel shard to its Ulysses or context-parallel form."""

from __future__ import annotations

from padfree.parallel.context import attention_context, gated_deltanet_context
from padfree.parallel.shard import ShardedRow
from padfree.parallel.ulysses import attention_ulysses, gated_deltanet_ulysses


def sharded_mixer(kind: str, module, hidden_1TC, position_embeddings, row: ShardedRow, backend: str):
    """kind "gdn" or "attention"; the mode per kind was fixed when the model was patched."""
    if kind == "gdn":
        fn = gated_deltanet_ulysses if row.sp.layer_modes["gdn"] == "ulysses" else gated_deltanet_context
        return fn(module, hidden_1TC, row, backend)
    fn = attention_ulysses if row.sp.layer_modes["attention"] == "ulysses" else attention_context
    return fn(module, hidden_1TC, position_embeddings, row, backend)
