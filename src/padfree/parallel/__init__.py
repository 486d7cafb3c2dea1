"""Sequence parallelism for packed rows, at any degree: Ulysses over heads, context parallelism beyond.

    mesh = padfree.parallel.init_mesh(dp=2, sp=4, device_type="cuda")
    sp = padfree.parallel.SequenceParallel(mesh["sp"], mode="auto")
    padfree.patch(model, sequence_parallel=sp)
    local = padfree.parallel.shard_batch(padfree.collate(samples), sp)
    model(**local, num_items_in_batch=global_trained_tokens).loss.backward()
    padfree.parallel.reduce_gradients(model)   # or FSDP2 over all ranks, summing (not averaging)

OverlappedGradReduce sums the gradients during the backward instead, bucket by bucket (the captured step's way).
"""

from padfree.parallel.grad_reduce import OverlappedGradReduce
from padfree.parallel.mesh import MODES, SequenceParallel, init_mesh, reduce_gradients, resolve_modes, ulysses_degrees
from padfree.parallel.shard import ShardedRow, gather_sequence, shard_batch

__all__ = [
    "MODES",
    "OverlappedGradReduce",
    "SequenceParallel",
    "ShardedRow",
    "gather_sequence",
    "init_mesh",
    "reduce_gradients",
    "resolve_modes",
    "shard_batch",
    "ulysses_degrees",
]
