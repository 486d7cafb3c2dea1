"""Reading training records (dicts) from a local file or folder, and recognising their shape.

Sources: JSONL (one object per line) and JSON (a list of objects) with the standard library;
Parquet (pyarrow) and `datasets.save_to_disk` folders (`datasets.load_from_disk`) when the
`datasets` package is installed. Shapes, decided by the first record and required of all:
    chat                {"messages": [{"role": ..., "content": ...}, ...]}  loss on assistant turns
    prompt_completion   {"prompt": str, "completion": str}                  loss on the completion
    text                {"text": str}                                       loss on every token
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from padfree.train.errors import TrainError

SHAPES = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}
_ACCEPTED = "'messages' (chat), 'prompt' + 'completion', or 'text'"


@dataclass
class Records:
    """The records of one source, with what error messages and the cache need to know about it."""

    rows: list[dict[str, Any]]
    source: str  # the path as given, for messages
    fingerprint: str  # identifies the content (sha256 of the file, or the dataset's own fingerprint)
    line_numbers: list[int] | None  # JSONL: the file line of each record (blank lines are skipped)

    def where(self, index: int) -> str:
        """`data.jsonl line 17` or `data.parquet record 16`: where record `index` came from."""
        if self.line_numbers is not None:
            return f"{self.source} line {self.line_numbers[index]}"
        return f"{self.source} record {index}"


def _needs_datasets(what: str) -> TrainError:
    return TrainError(f"reading {what} needs the `datasets` package: pip install datasets (or convert it to JSONL).")


def _read_jsonl(path: Path, data: bytes) -> Records:
    rows, numbers = [], []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TrainError(
                f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno}); "
                "fix or delete that line (JSONL needs one complete JSON object per line)."
            ) from None
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise TrainError(f"{path} line {number} holds a JSON {kind}, not an object like {{\"text\": ...}}.")
        rows.append(row)
        numbers.append(number)
    return Records(rows, str(path), hashlib.sha256(data).hexdigest(), numbers)


def _read_json(path: Path, data: bytes) -> Records:
    try:
        rows = json.loads(data)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several top-level values: it is JSON Lines named .json
            return _read_jsonl(path, data)
        where = f"line {error.lineno}, column {error.colno}"
        raise TrainError(f"{path} is not valid JSON ({error.msg} at {where}).") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        kind = type(rows).__name__
        raise TrainError(f"{path} must hold a JSON list of objects (or one object per line), got a {kind}.")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TrainError(f"{path} record {index} is a JSON {type(row).__name__}, not an object.")
    return Records(rows, str(path), hashlib.sha256(data).hexdigest(), None)


def _read_parquet(path: Path) -> Records:
    try:
        import pyarrow.parquet as pq  # installed with `datasets`
    except ImportError:
        raise _needs_datasets(f"Parquet ({path})") from None
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return Records(pq.read_table(path).to_pylist(), str(path), digest, None)


def _read_dataset_folder(path: Path, split: str) -> Records:
    try:
        import datasets
    except ImportError:
        raise _needs_datasets(f"the dataset folder {path}") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise TrainError(
            f"{path} is not a dataset saved with `datasets.save_to_disk` ({error}); pass a JSONL/JSON/Parquet file "
            "or such a folder."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise TrainError(f"{path} has splits {sorted(loaded)}, not {split!r}; pass --split with one of them.")
        loaded = loaded[split]
    return Records(loaded.to_list(), str(path), f"dataset:{loaded._fingerprint}", None)


def read_records(path: str | Path, split: str = "train") -> Records:
    """All records of `path`; raises TrainError for a missing, malformed or empty source."""
    path = Path(path)
    if path.is_dir():
        records = _read_dataset_folder(path, split)
    elif not path.is_file():
        raise TrainError(f"--data {path}: no such file or folder (padfree reads local data only).")
    elif path.suffix == ".jsonl":
        records = _read_jsonl(path, path.read_bytes())
    elif path.suffix == ".json":
        records = _read_json(path, path.read_bytes())
    elif path.suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise TrainError(
            f"--data {path}: unknown format {path.suffix!r}; use .jsonl, .json, .parquet or a dataset folder."
        )
    if not records.rows:
        raise TrainError(f"--data {path} holds no records; point --data at a non-empty dataset.")
    return records


def detect_shape(records: Records) -> str:
    """The shape of the records (see the module docstring); every record must have its keys."""
    first = records.rows[0]
    shape = next((name for name, keys in SHAPES.items() if all(k in first for k in keys)), None)
    if shape is None:
        raise TrainError(
            f"{records.where(0)} has keys {sorted(first)}; padfree train accepts records with {_ACCEPTED}. "
            "Rename the fields, or convert the data."
        )
    keys = SHAPES[shape]
    for index, row in enumerate(records.rows):
        missing = [k for k in keys if row.get(k) is None]
        if missing:
            raise TrainError(
                f"{records.where(index)} lacks {missing} (keys found: {sorted(row)}), but the first record is "
                f"{shape}-shaped ({', '.join(keys)}); every record must have the same shape."
            )
    return shape
