"""Records -> token ids and a per-token "trained" mask, computed once and cached on disk.

What is trained, per shape:
    chat               assistant turns only. With a chat template that marks them with
                       `{% generation %}`, transformers' `return_assistant_tokens_mask` finds them.
                       Most real templates (Qwen's included) lack the markers; then each assistant
                       turn's span is found by rendering the conversation up to it: the text the
                       template adds after `messages[:i]` + generation prompt is turn i's answer.
    prompt_completion  the completion (and the eos appended to it); the prompt is context.
    text               every token, with eos appended so the model learns where a document ends.

The cache is a .npz under --cache-dir named by a hash of the data's content, the tokenizer (its
vocabulary, merges, special tokens and chat template) and this module's format version, so a
changed file or tokenizer never reads stale ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from padfree.train.errors import TrainError
from padfree.train.records import Records

FORMAT_VERSION = 1  # bump when the tokenisation rules above change


@dataclass
class TokenizedData:
    """Samples stored end to end: sample i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # [total] int32
    trained: np.ndarray  # [total] bool: the token is a training target
    offsets: np.ndarray  # [n + 1] int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, index: int, keep: int) -> dict[str, list[int]]:
        """The first `keep` tokens of sample `index` as `padfree.collate` takes them."""
        start = int(self.offsets[index])
        ids = self.ids[start : start + keep].astype(np.int64)
        labels = np.where(self.trained[start : start + keep], ids, -100)
        return {"input_ids": ids.tolist(), "labels": labels.tolist()}


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, vocab, str(tokenizer.chat_template)]
    parts += [str(tokenizer.eos_token), str(tokenizer.bos_token)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _chat_with_markers(tokenizer, messages) -> tuple[list[int], list[bool]]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


def _chat_by_prefixes(tokenizer, messages) -> tuple[list[int], list[bool]] | None:
    """Assistant spans from prefix renders; None when the template does not render prefixes consistently."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            return None
        end = len(upto)
        if tokenizer.eos_token:  # stop after the turn's end token, as {% generation %} markers would
            found = upto.rfind(tokenizer.eos_token, len(before))
            end = found + len(tokenizer.eos_token) if found >= 0 else end
        spans.append((len(before), end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    trained = [any(a <= start < b for a, b in spans) for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), trained


def _tokenize_one(tokenizer, shape: str, row: dict, has_markers: bool, eos: int | None) -> tuple[list[int], list[bool]]:
    if shape == "chat":
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("'messages' must be a list of {'role': ..., 'content': ...} objects")
        if has_markers:
            return _chat_with_markers(tokenizer, messages)
        found = _chat_by_prefixes(tokenizer, messages)
        if found is None:
            raise ValueError(
                "the tokenizer's chat template renders a conversation differently from its prefixes (it rewrites "
                "earlier turns), so assistant turns cannot be located; pass --chat-template with a template that "
                "marks them with {% generation %}...{% endgeneration %}"
            )
        return found
    if shape == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError("'prompt' and 'completion' must be strings (for conversations use 'messages')")
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids += [eos] if eos is not None else []
        return prompt_ids + completion_ids, [False] * len(prompt_ids) + [True] * len(completion_ids)
    text = row["text"]
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {type(text).__name__}")
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if eos is not None and (not ids or ids[-1] != eos):
        ids = ids + [eos]
    return ids, [True] * len(ids)


def tokenize_records(tokenizer, records: Records, shape: str) -> TokenizedData:
    template = tokenizer.chat_template if shape == "chat" else ""
    if shape == "chat" and not template:
        raise TrainError(
            f"{records.source} holds chat 'messages' but the tokenizer has no chat template; pass --chat-template "
            "FILE (a Jinja template) or a --tokenizer that has one."
        )
    has_markers = re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None
    eos = tokenizer.eos_token_id
    all_ids, all_trained, offsets = [], [], [0]
    for index, row in enumerate(records.rows):
        try:
            ids, trained = _tokenize_one(tokenizer, shape, row, has_markers, eos)
        except (ValueError, TypeError, KeyError) as error:
            raise TrainError(f"{records.where(index)}: cannot tokenise this record: {error}.") from None
        except Exception as error:  # Jinja errors from a template that does not fit the record
            raise TrainError(f"{records.where(index)}: the chat template failed on this record: {error}.") from None
        all_ids.extend(ids)
        all_trained.extend(trained)
        offsets.append(offsets[-1] + len(ids))
    return TokenizedData(
        np.asarray(all_ids, dtype=np.int32), np.asarray(all_trained, dtype=bool), np.asarray(offsets, dtype=np.int64)
    )


def cache_key(records: Records, tokenizer, shape: str) -> str:
    parts = [str(FORMAT_VERSION), records.fingerprint, tokenizer_fingerprint(tokenizer), shape]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def load_cached(cache_dir: str | Path, key: str) -> TokenizedData | None:
    path = Path(cache_dir) / f"tokens-{key}.npz"
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return TokenizedData(archive["ids"], archive["trained"], archive["offsets"])


def save_cached(cache_dir: str | Path, key: str, data: TokenizedData) -> Path:
    """Write atomically (temp file + os.replace): a killed write never leaves a truncated cache file."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tokens-{key}.npz"
    buffer = io.BytesIO()
    np.savez(buffer, ids=data.ids, trained=data.trained, offsets=data.offsets)
    temp = folder / f".tokens-{key}.{os.getpid()}.tmp"
    temp.write_bytes(buffer.getvalue())
    os.replace(temp, path)
    return path
