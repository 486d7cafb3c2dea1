"""From tokenised samples to the packed rows of each optimizer step, deterministically.

Selection, before packing (each count is reported, never silent):
  * samples longer than --max-tokens follow --overlong: truncate (keep the first max_tokens
    tokens), drop, or error (naming the longest and where it is);
  * samples with no trained token (after truncation) are skipped: they would cost compute and
    teach nothing. Only if none remain is it an error.
Packing is `padfree.packing.pack` (best-fit decreasing) once; each epoch visits the rows in a
permutation drawn from (seed, epoch). The rows of all epochs form one stream, and optimizer step s
takes stream positions [s * grad_accum, (s + 1) * grad_accum): the data position of a resumed run
follows from its step alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from padfree.packing import PackingPlan, pack
from padfree.train.errors import TrainError
from padfree.train.records import Records, detect_shape, read_records
from padfree.train.tokenize import TokenizedData, cache_key, load_cached, save_cached, tokenize_records


@dataclass
class SelectionReport:
    samples: int = 0
    used: int = 0
    no_trained: int = 0  # no trained token at all (e.g. a conversation without an assistant turn)
    truncated: int = 0
    truncated_tokens: int = 0
    truncated_untrained: int = 0  # truncation cut away all of the sample's trained tokens
    dropped: int = 0  # longer than the budget under --overlong drop
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.used:,} of {self.samples:,} samples used"]
        if self.no_trained:
            out.append(f"{self.no_trained:,} skipped: no trained token (e.g. no assistant turn, or empty completion)")
        if self.truncated:
            out.append(f"{self.truncated:,} truncated to --max-tokens (lost {self.truncated_tokens:,} tokens)")
        if self.truncated_untrained:
            out.append(f"{self.truncated_untrained:,} skipped: truncation removed all their trained tokens")
        if self.dropped:
            out.append(f"{self.dropped:,} dropped: longer than --max-tokens (--overlong drop)")
        return out


def select(tokens: TokenizedData, records: Records, budget: int, policy: str) -> tuple[np.ndarray, SelectionReport]:
    """The kept length of every sample (0 = excluded) and what was excluded, per the module docstring."""
    lengths = tokens.lengths
    report = SelectionReport(samples=len(lengths))
    too_long = lengths > budget
    if too_long.any() and policy == "error":
        longest = int(lengths.argmax())
        raise TrainError(
            f"{int(too_long.sum()):,} samples are longer than --max-tokens {budget:,} (the longest, "
            f"{records.where(longest)}, has {int(lengths[longest]):,} tokens); raise --max-tokens to at least "
            f"{int(lengths[longest]):,}, or pass --overlong truncate or --overlong drop."
        )
    keep = np.minimum(lengths, budget)
    if policy == "drop":
        keep[too_long] = 0
        report.dropped = int(too_long.sum())
    elif too_long.any():
        report.truncated = int(too_long.sum())
        report.truncated_tokens = int((lengths[too_long] - budget).sum())
    # Trained targets of a sample's first `keep` tokens: the model shifts labels and padfree.collate
    # masks each document's first label, so token 0 never counts.
    cumulative = np.concatenate([[0], np.cumsum(tokens.trained, dtype=np.int64)])
    starts = tokens.offsets[:-1]
    full_count = cumulative[tokens.offsets[1:]] - cumulative[np.minimum(starts + 1, tokens.offsets[1:])]
    kept_count = cumulative[starts + keep] - cumulative[np.minimum(starts + 1, starts + keep)]
    no_trained = full_count == 0
    lost = (kept_count == 0) & ~no_trained & (keep > 0)
    report.no_trained, report.truncated_untrained = int(no_trained.sum()), int(lost.sum())
    keep[no_trained | lost] = 0
    report.used = int(np.count_nonzero(keep))
    if report.used == 0:
        raise TrainError(
            f"no usable sample in {records.source}: " + "; ".join(report.lines()[1:] or ["every sample is empty"])
            + ". Check the data's shape (chat data trains only assistant turns) and --max-tokens."
        )
    return keep, report


@dataclass
class PackedStream:
    """The packed rows of all epochs as one stream of micro-batches (lists of collate-ready samples)."""

    tokens: TokenizedData
    plan: PackingPlan
    seed: int

    @property
    def num_rows(self) -> int:
        return len(self.plan.rows)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def row(self, position: int) -> list[dict[str, list[int]]]:
        epoch, index = divmod(position, self.num_rows)
        samples = self.plan.rows[int(self._order(epoch)[index])]
        return [self.tokens.sample(i, self.plan.lengths[i]) for i in samples]

    def total_steps(self, epochs: int, grad_accum: int, max_steps: int | None) -> int:
        return max_steps if max_steps is not None else math.ceil(epochs * self.num_rows / grad_accum)

    def step_positions(self, step: int, grad_accum: int, epochs: int, max_steps: int | None) -> range:
        """Stream positions of optimizer step `step` (0-based); the last step of an epoch-bounded run may be short."""
        start = step * grad_accum
        end = start + grad_accum
        if max_steps is None:
            end = min(end, epochs * self.num_rows)
        return range(start, end)


def pack_samples(tokens: TokenizedData, keep: np.ndarray, budget: int, seed: int) -> PackedStream:
    plan = pack(keep, budget, policy="error", seed=None)  # keep <= budget already; the order is PackedStream's
    return PackedStream(tokens, plan, seed)


@dataclass
class LoadedData:
    stream: PackedStream
    report: SelectionReport
    shape: str
    source: str
    cache_key: str
    from_cache: bool


def load_training_data(path, split: str, tokenizer, cache_dir, budget: int, policy: str, seed: int) -> LoadedData:
    """Read, tokenise (or load the cached tokens), select and pack; writes nothing (see `save_cache`)."""
    records = read_records(path, split)
    shape = detect_shape(records)
    key = cache_key(records, tokenizer, shape)
    tokens = load_cached(cache_dir, key)
    from_cache = tokens is not None
    if tokens is None:
        tokens = tokenize_records(tokenizer, records, shape)
    keep, report = select(tokens, records, budget, policy)
    return LoadedData(pack_samples(tokens, keep, budget, seed), report, shape, records.source, key, from_cache)


def save_cache(loaded: LoadedData, cache_dir) -> None:
    if not loaded.from_cache:
        save_cached(cache_dir, loaded.cache_key, loaded.stream.tokens)
