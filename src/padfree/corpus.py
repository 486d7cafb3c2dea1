"""Sample-length corpora for packing tests and benchmarks, and paths to padfree's bundled data.

Synthetic: `lognormal_lengths` and `pareto_lengths`, the long-tailed shapes real SFT and
pre-training data have (many short samples, a few very long ones). Real: `load_cpython_lengths`,
the token counts of the CPython standard library's .py files with padfree's bundled tokenizer;
data nobody here wrote, with empty files (`__init__.py`) and files far longer than any budget.

Bundled data (src/padfree/data/, made by scripts/make_bundled_data.py):
    tokenizer/                  byte-level BPE, 4,096 tokens, ChatML template with assistant masks
    chat_sample.jsonl           702 {"messages": [user, assistant]} samples about stdlib docstrings
    cpython_stdlib_lengths.txt  1,788 token counts, sorted by file path
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np


def bundled_path(name: str) -> Path:
    """Filesystem path of a bundled data file or folder, e.g. `bundled_path("tokenizer")`.

    A real path (not a Traversable) because `AutoTokenizer.from_pretrained` needs one; padfree is
    never installed as a zip, so the package data always lives on disk.
    """
    path = Path(str(resources.files("padfree") / "data" / name))
    if not path.exists():
        raise FileNotFoundError(
            f"bundled data {name!r} not found at {path}; the install is missing padfree's package data "
            "(pyproject.toml needs `padfree = [\"data/*\", \"data/**/*\"]` under [tool.setuptools.package-data]); "
            "reinstall padfree, or regenerate it with scripts/make_bundled_data.py."
        )
    return path


def load_cpython_lengths() -> np.ndarray:
    """Token counts (int64) of the CPython stdlib's .py files, sorted by path; 0 for empty files."""
    text = bundled_path("cpython_stdlib_lengths.txt").read_text()
    return np.array([int(line) for line in text.splitlines() if line and not line.startswith("#")], dtype=np.int64)


def _check(n: int, max_len: int) -> None:
    if n < 0 or max_len < 1:
        raise ValueError(f"need n >= 0 and max_len >= 1, got n={n}, max_len={max_len}.")


def lognormal_lengths(n: int, median: float = 300.0, sigma: float = 1.0, max_len: int = 8192, seed: int = 0) -> np.ndarray:
    """`n` lengths (int64) from a lognormal with the given median, rounded and clipped to [1, max_len].

    sigma is the spread of log-length: 1.0 puts ~16% of samples above e * median (~815 tokens for
    median 300) and ~0.45% above 4096.
    """
    _check(n, max_len)
    if median <= 0 or sigma < 0:
        raise ValueError(f"need median > 0 and sigma >= 0, got median={median}, sigma={sigma}.")
    draws = np.random.default_rng(seed).lognormal(math.log(median), sigma, n)
    return np.clip(np.rint(draws), 1, max_len).astype(np.int64)


def pareto_lengths(n: int, min_len: int = 64, alpha: float = 1.2, max_len: int = 8192, seed: int = 0) -> np.ndarray:
    """`n` lengths (int64) from a Pareto with scale `min_len` and tail index `alpha`, clipped to max_len.

    P(length > x) = (min_len / x) ** alpha: alpha near 1 is a very heavy tail (many samples hit
    max_len), larger alpha a lighter one.
    """
    _check(n, max_len)
    if min_len < 1 or alpha <= 0:
        raise ValueError(f"need min_len >= 1 and alpha > 0, got min_len={min_len}, alpha={alpha}.")
    draws = min_len * (1.0 + np.random.default_rng(seed).pareto(alpha, n))  # numpy's pareto is Lomax
    return np.clip(np.floor(draws), 1, max_len).astype(np.int64)
