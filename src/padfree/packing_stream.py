"""Streaming bin packing for iterable datasets: bounded memory, deterministic, BFD inside a buffer.

The stream fills a buffer of `buffer_size` samples, packs it with the same best-fit decreasing as
`padfree.packing.pack`, and emits the rows that are exactly full. Rows with free space are the ones
new samples could still improve, so their samples stay in the buffer (the least-filled rows first,
at most half the buffer, so every round makes progress and memory stays bounded) and are packed
again with the next samples. At the end of the stream everything left is emitted.

On a long-tailed distribution (lognormal, median 300 tokens) with budget 8192 and buffer 10,000
this loses almost nothing against packing the whole dataset at once (benchmarks/bench_packing.py).
The price: a sample kept back may be emitted later than its neighbours (at the latest at the end
of the stream), which reorders data a little, deterministically.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Iterator

import numpy as np

from padfree.packing import PackingStats, _bfd_assign, _check_budget_policy, _group_rows


def pack_stream(
    samples: Iterable[tuple[Any, int]],
    budget: int,
    *,
    buffer_size: int = 10_000,
    policy: str = "truncate",
    seed: int | None = 0,
    stats: PackingStats | None = None,
) -> Iterator[list[Any]]:
    """Yield rows (lists of items) of at most `budget` tokens from `(item, length)` pairs.

    policy: for samples longer than `budget`, as in `pack`. A truncated item is yielded unchanged,
            alone in its row: the caller cuts it to its first `budget` tokens. With "error", the
            ValueError comes when the sample is reached, after earlier rows were yielded.
    seed:   shuffles the rows emitted from each buffer (same seed, same stream: same rows, same
            order); None keeps BFD order.
    stats:  a `PackingStats` to fill in as rows are yielded (read it after the loop); counts add up
            across calls, so pass a fresh one per epoch.

    Zero-length samples are dropped and counted in `stats.empty`. Within a row, items keep their
    stream order.

    >>> stats = PackingStats()
    >>> list(pack_stream([("a", 5), ("b", 3), ("c", 4), ("d", 9)], budget=8, seed=None, stats=stats))
    [['d'], ['a', 'b'], ['c']]
    >>> stats.truncated, stats.num_rows
    (1, 3)
    """
    _check_budget_policy(budget, policy)
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 2:
        raise ValueError(f"buffer_size must be an int >= 2 (samples held for packing), got {buffer_size!r}.")
    budget = int(budget)
    stats = PackingStats(budget=budget) if stats is None else stats
    if stats.budget not in (0, budget):
        raise ValueError(
            f"stats was filled for budget={stats.budget} but this stream packs budget={budget}; "
            "pass a fresh PackingStats() per stream."
        )
    stats.budget = budget
    return _stream(samples, budget, buffer_size, policy, seed, stats)


def _stream(samples, budget, buffer_size, policy, seed, stats) -> Iterator[list[Any]]:
    rng = random.Random(seed) if seed is not None else None
    items: list[Any] = []
    lengths: list[int] = []
    for position, (item, length) in enumerate(samples):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"sample {position} ({item!r:.60}) has length {length!r}; lengths must be ints >= 0.")
        length = int(length)
        stats.num_samples += 1
        if length == 0:
            stats.empty += 1
            continue
        if length > budget:
            if policy == "error":
                raise ValueError(
                    f"sample {position} ({item!r:.60}) has {length:,} tokens, more than the budget of {budget:,}; "
                    f"raise --max-length/budget to at least {length:,}, or pass policy='truncate' or policy='drop'."
                )
            if policy == "drop":
                stats.dropped += 1
                continue
            stats.truncated += 1
            stats.truncated_tokens += length - budget
            length = budget
        if length == budget:  # a full row on its own: nothing to pack
            stats.num_rows += 1
            stats.real_tokens += budget
            yield [item]
            continue
        items.append(item)
        lengths.append(length)
        if len(items) >= buffer_size:
            rows, carried = _drain(lengths, budget, buffer_size // 2, rng)
            yield from _emit(rows, items, lengths, stats)
            items = [items[i] for i in carried]
            lengths = [lengths[i] for i in carried]
    rows, _ = _drain(lengths, budget, 0, rng)
    yield from _emit(rows, items, lengths, stats)


def _drain(lengths: list[int], budget: int, max_carried: int, rng: random.Random | None):
    """Pack the buffer: (rows to emit, buffer positions to keep), both lists of positions."""
    if not lengths:
        return [], []
    lengths_n = np.asarray(lengths, dtype=np.int64)
    row_of, num_rows = _bfd_assign(lengths_n, budget)
    rows = _group_rows(row_of, np.arange(len(lengths)), num_rows, seed=None)
    fill = np.bincount(row_of, weights=lengths_n, minlength=num_rows)
    count = np.bincount(row_of, minlength=num_rows)
    partial = np.flatnonzero(fill < budget)
    partial = partial[np.argsort(fill[partial], kind="stable")]  # least filled first
    keep = partial[: int(np.searchsorted(np.cumsum(count[partial]), max_carried, side="right"))]
    kept = set(keep.tolist())
    emitted = [row for r, row in enumerate(rows) if r not in kept]
    if rng is not None:
        rng.shuffle(emitted)
    carried = sorted(i for r in kept for i in rows[r])  # stream order
    return emitted, carried


def _emit(rows, items, lengths, stats) -> Iterator[list[Any]]:
    for row in rows:
        stats.num_rows += 1
        stats.real_tokens += sum(lengths[i] for i in row)
        yield [items[i] for i in row]
