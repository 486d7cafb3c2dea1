"""Collation: a list of samples becomes one packed row that a Hugging Face causal LM accepts.

The row is `[1, T]`, documents end to end, with the metadata transformers' packed path names:
`cu_seq_lens_q/k` (int32 offsets) and `max_length_q/k`. Labels follow the transformers convention
(the model shifts them: position t is trained to predict labels[t + 1]), and the first label of
every document is -100, so no token is ever trained to predict the next document's first token.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

IGNORE_INDEX = -100


def _as_list(values: Any, name: str, index: int) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"sample {index}: {name} must be 1-D, got shape {tuple(values.shape)}.")
        return values.tolist()
    return [int(v) for v in values]


def collate(
    samples: Sequence[Mapping[str, Any]],
    *,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
    pad_token_id: int = 0,
) -> dict[str, torch.Tensor | int]:
    """Pack `samples` (each with `input_ids` and optional `labels`) into one row.

    Returns `input_ids, position_ids, labels: [1, T]` (int64), `cu_seq_lens_q/k: [N + 1]` (int32) and
    `max_length_q/k` (int). Without `labels`, every token but a document's first is trained.

    Padding keeps shapes static (fewer recompiles, steadier memory): `pad_to=L` pads the row to
    exactly L tokens, `pad_to_multiple_of=M` to the next multiple of M. The padding is one dummy
    document (its own positions, labels all -100), so it never attends to or trains anything real.

    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}], pad_to_multiple_of=8)
    >>> batch["cu_seq_lens_q"].tolist(), batch["labels"].tolist()
    ([0, 3, 5, 8], [[-100, 6, 7, -100, 9, -100, -100, -100]])
    """
    if len(samples) == 0:
        raise ValueError("collate() got no samples; pass at least one sample with non-empty input_ids.")
    if pad_to is not None and pad_to_multiple_of is not None:
        raise ValueError("pass either pad_to or pad_to_multiple_of, not both.")
    input_ids: list[int] = []
    labels: list[int] = []
    lengths: list[int] = []
    for index, sample in enumerate(samples):
        ids = _as_list(sample["input_ids"], "input_ids", index)
        if not ids:
            raise ValueError(f"sample {index} has no input_ids; drop empty samples before collating.")
        sample_labels = sample.get("labels")
        doc_labels = ids if sample_labels is None else _as_list(sample_labels, "labels", index)
        if len(doc_labels) != len(ids):
            raise ValueError(
                f"sample {index}: labels has {len(doc_labels)} entries but input_ids has {len(ids)}; "
                "they must align token for token (the model shifts labels itself)."
            )
        input_ids += ids
        labels += [IGNORE_INDEX] + list(doc_labels[1:])  # no prediction across the boundary
        lengths.append(len(ids))

    total = len(input_ids)
    target = total
    if pad_to is not None:
        if pad_to < total:
            raise ValueError(
                f"pad_to={pad_to} is shorter than the packed row ({total} tokens); raise pad_to or pack fewer "
                "samples per row (padfree.pack with budget=pad_to)."
            )
        target = pad_to
    elif pad_to_multiple_of is not None:
        if pad_to_multiple_of <= 0:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}.")
        target = -(-total // pad_to_multiple_of) * pad_to_multiple_of
    if target > total:
        input_ids += [pad_token_id] * (target - total)
        labels += [IGNORE_INDEX] * (target - total)
        lengths.append(target - total)

    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    position_ids = [p for n in lengths for p in range(n)]
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32)
    max_length = max(lengths)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([position_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens.clone(),
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
