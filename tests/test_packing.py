"""padfree.packing / packing_stream / corpus: exact BFD, every sample accounted for, bundled data loads."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from padfree.corpus import bundled_path, load_cpython_lengths, lognormal_lengths, pareto_lengths
from padfree.packing import PackingStats, pack
from padfree.packing_stream import pack_stream


def naive_bfd_fills(lengths: list[int], budget: int) -> list[int]:
    """Textbook O(n * rows) best-fit decreasing: the sorted fill of every row."""
    free: list[int] = []
    for size in sorted(lengths, reverse=True):
        fits = [r for r, f in enumerate(free) if f >= size]
        if fits:
            free[min(fits, key=lambda r: free[r])] -= size
        else:
            free.append(budget - size)
    return sorted(budget - f for f in free)


def check_plan(plan, lengths, budget):
    """Every kept sample in exactly one row, excluded ones in none, no row over budget, stats add up."""
    lengths = list(lengths)
    flat = [i for row in plan.rows for i in row]
    assert len(flat) == len(set(flat))
    assert sorted(flat) == [i for i, n in enumerate(plan.lengths) if n > 0]
    assert all(plan.lengths[i] == min(n, budget) for i, n in enumerate(lengths) if plan.lengths[i])
    assert max(plan.row_lengths(), default=0) <= budget
    assert all(row == sorted(row) for row in plan.rows)
    stats = plan.stats
    assert stats.num_rows == len(plan.rows) and stats.slots == len(plan.rows) * budget
    assert stats.real_tokens == sum(plan.lengths) == sum(plan.row_lengths())
    excluded = sum(1 for n in plan.lengths if n == 0)
    assert excluded == stats.empty + stats.dropped


@pytest.mark.parametrize("case", range(40))
def test_pack_is_exact_best_fit_decreasing(case):
    # Rows with equal free space are interchangeable, so any BFD gives the same multiset of fills.
    rng = np.random.default_rng(case)
    budget = int(rng.integers(1, 64))
    n = int(rng.integers(1, 150))
    if case % 2:  # few distinct lengths: exercises the bulk placement of equal lengths
        lengths = (rng.integers(1, 4, n) * max(1, budget // int(rng.integers(2, 7)))).clip(1, budget)
    else:
        lengths = rng.integers(1, budget + 1, n)
    plan = pack(lengths, budget)
    check_plan(plan, lengths, budget)
    assert sorted(plan.row_lengths()) == naive_bfd_fills(lengths.tolist(), budget)


def test_same_seed_same_plan_and_seed_only_reorders_rows():
    lengths = lognormal_lengths(5_000, median=200, seed=3)
    a, b, c = pack(lengths, 2048, seed=7), pack(lengths.tolist(), 2048, seed=7), pack(torch.from_numpy(lengths), 2048, seed=8)
    assert a.rows == b.rows and a.lengths == b.lengths
    assert a.rows != c.rows and sorted(a.rows) == sorted(c.rows)
    bfd_order = pack(lengths, 2048, seed=None).row_lengths()
    assert bfd_order[0] == 2048 and a.row_lengths() != bfd_order  # shuffled: not longest-first


def test_long_tailed_efficiency_at_least_99_percent():
    lengths = lognormal_lengths(100_000, median=300, sigma=1.0, max_len=8192, seed=0)
    plan = pack(lengths, 8192)
    check_plan(plan, lengths, 8192)
    assert plan.stats.num_samples / plan.stats.num_rows > 10, "rows should hold many samples each"
    assert plan.stats.efficiency >= 0.99, plan.summary()


def test_pareto_efficiency():
    lengths = pareto_lengths(50_000, min_len=64, alpha=1.2, max_len=8192, seed=1)
    assert (lengths == 8192).any() and lengths.min() >= 64
    assert pack(lengths, 8192).stats.efficiency >= 0.99


@pytest.mark.parametrize("budget", [8192, 16384, 131072])  # 131072: the non-radix sort path
def test_cpython_corpus(budget):
    lengths = load_cpython_lengths()
    too_long, empty = int((lengths > budget).sum()), int((lengths == 0).sum())
    assert len(lengths) > 1000 and too_long > 0 and empty > 0  # the corpus exercises every path
    plan = pack(lengths, budget, policy="truncate")
    check_plan(plan, lengths, budget)
    assert (plan.stats.truncated, plan.stats.empty, plan.stats.dropped) == (too_long, empty, 0)
    assert plan.stats.truncated_tokens == int((lengths[lengths > budget] - budget).sum())
    assert plan.stats.efficiency >= 0.99, plan.summary()
    dropped = pack(lengths, budget, policy="drop")
    check_plan(dropped, lengths, budget)
    assert (dropped.stats.dropped, dropped.stats.truncated) == (too_long, 0)


def test_policies_count_and_explain():
    lengths = [5, 12, 0, 3, 20, 8]
    truncated = pack(lengths, 8, policy="truncate", seed=None)
    assert truncated.lengths == [5, 8, 0, 3, 8, 8]
    assert (truncated.stats.truncated, truncated.stats.truncated_tokens, truncated.stats.empty) == (2, 16, 1)
    assert truncated.rows == [[1], [4], [5], [0, 3]]
    dropped = pack(lengths, 8, policy="drop", seed=None)
    assert dropped.lengths == [5, 0, 0, 3, 0, 8] and dropped.stats.dropped == 2
    check_plan(dropped, lengths, 8)
    with pytest.raises(ValueError, match=r"2 of 6 samples are longer than the budget of 8 .*longest: 20 .*sample 4.*truncate"):
        pack(lengths, 8, policy="error")
    assert "2 truncated (lost 16 tokens)" in truncated.summary() and "1 empty" in truncated.summary()


def test_empty_input_gives_an_empty_plan():
    for lengths in ([], np.zeros(0, dtype=np.int64), [0, 0]):
        plan = pack(lengths, 16)
        assert plan.rows == [] and plan.stats.num_rows == 0 and plan.stats.efficiency == 0.0
    assert pack([0, 0], 16).stats.empty == 2


@pytest.mark.parametrize(
    "lengths, budget, policy, match",
    [
        ([1, -2], 8, "truncate", "lengths must be >= 0, got -2 for sample 1"),
        ([1.5], 8, "truncate", "must be integers"),
        ([[1, 2]], 8, "truncate", "must be 1-D"),
        ([1], 0, "truncate", "budget must be a positive int"),
        ([1], 8, "split", "policy must be one of"),
    ],
)
def test_invalid_input_is_named(lengths, budget, policy, match):
    with pytest.raises(ValueError, match=match):
        pack(lengths, budget, policy=policy)


def _stream(lengths, budget, **kwargs):
    stats = PackingStats()
    rows = list(pack_stream(((f"s{i}", n) for i, n in enumerate(lengths)), budget, stats=stats, **kwargs))
    return rows, stats


def test_stream_covers_every_item_within_budget():
    lengths = lognormal_lengths(20_000, median=300, seed=5).tolist()
    lengths[10] = 0
    lengths[11] = 9000
    rows, stats = _stream(lengths, 8192, buffer_size=1_000)
    length_of = {f"s{i}": min(n, 8192) for i, n in enumerate(lengths)}
    flat = [item for row in rows for item in row]
    assert sorted(flat) == sorted(f"s{i}" for i, n in enumerate(lengths) if n > 0)
    assert all(sum(length_of[x] for x in row) <= 8192 for row in rows)
    assert (stats.num_samples, stats.empty, stats.truncated, stats.truncated_tokens) == (20_000, 1, 1, 808)
    assert stats.num_rows == len(rows) and stats.real_tokens == sum(length_of.values())
    assert len(rows) > 20_000 * 300 / 8192 and stats.num_samples / stats.num_rows > 10  # many rows, many samples each
    assert _stream(lengths, 8192, buffer_size=1_000) == (rows, stats)  # deterministic


def test_stream_efficiency_with_buffer_10k():
    lengths = lognormal_lengths(100_000, median=300, sigma=1.0, max_len=8192, seed=0).tolist()
    _, stats = _stream(lengths, 8192, buffer_size=10_000)
    assert stats.efficiency >= 0.97, stats.summary()


def test_stream_small_buffer_keeps_partial_rows_back():
    # Emitting every row of each buffer would give ~96% here; repacking the partial ones gives ~99.9%.
    lengths = lognormal_lengths(20_000, median=300, seed=1).tolist()
    _, stats = _stream(lengths, 8192, buffer_size=200)
    assert stats.efficiency >= 0.99, stats.summary()


def test_stream_memory_is_bounded():
    consumed = 0
    emitted = 0

    def source():
        nonlocal consumed
        rng = random.Random(0)
        for i in range(5_000):
            consumed += 1
            yield i, 2 * rng.randint(500, 1_500)  # even lengths, odd budget: no row is ever full

    for row in pack_stream(source(), 4095, buffer_size=256):
        emitted += len(row)
        assert consumed - emitted <= 256
    assert emitted == 5_000


def test_stream_policies():
    items = [("a", 5), ("b", 12), ("c", 0), ("d", 3)]
    stats = PackingStats()
    assert sorted(map(sorted, pack_stream(items, 8, policy="drop", stats=stats))) == [["a", "d"]]
    assert (stats.dropped, stats.empty, stats.num_samples) == (1, 1, 4)
    with pytest.raises(ValueError, match=r"sample 1 \('b'\) has 12 tokens, more than the budget of 8"):
        list(pack_stream(items, 8, policy="error"))
    with pytest.raises(ValueError, match="pass a fresh PackingStats"):
        pack_stream(items, 16, stats=stats)
    with pytest.raises(ValueError, match="buffer_size must be an int >= 2"):
        pack_stream(items, 8, buffer_size=1)


def test_bundled_tokenizer_and_chat_template():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_path("tokenizer"))
    assert tokenizer.is_fast and len(tokenizer) == 4096
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    text = "def f(x):\n    return x + 1  # héllo\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    messages = [
        {"role": "user", "content": "What does `json.dumps` do?"},
        {"role": "assistant", "content": "Serialize obj."},
        {"role": "user", "content": "And loads?"},
        {"role": "assistant", "content": "Deserialize."},
    ]
    out = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    trained = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "Serialize obj.<|im_end|>Deserialize.<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat does `json.dumps` do?<|im_end|>\n<|im_start|>assistant\n"


def test_bundled_chat_sample():
    lines = bundled_path("chat_sample.jsonl").read_text(encoding="utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) >= 300
    assert all([m["role"] for m in s["messages"]] == ["user", "assistant"] for s in samples)
    answers = [len(s["messages"][1]["content"]) for s in samples]
    assert min(answers) >= 20 and max(answers) <= 402
