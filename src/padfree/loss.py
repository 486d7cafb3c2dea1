"""Causal-LM loss for packed rows, never materialising [T, vocab] logits, normalised by trained tokens.

Shape letters: B rows, T tokens per row, H hidden size, V vocabulary.

Label convention (transformers'): `labels_BT` is NOT shifted; position t is trained to predict
labels[t + 1]. `shift_labels` moves labels left by one and pads the end with -100, exactly as
transformers' `ForCausalLMLoss` does. padfree.collate already sets the first label of every
document to -100, so after the shift no position predicts the next document's first token.

Normalisation rule — why the loss is a sum divided by a count given from outside:
    An optimizer step sees micro-batches k = 1..K (gradient accumulation, and later data/sequence-
    parallel ranks). Let S_k be the summed cross-entropy of micro-batch k and N_k its trained-token
    count (labels[:, 1:] != -100). One big batch would have loss sum_k S_k / sum_k N_k. Calling
    `causal_lm_loss(..., num_items_in_batch=N)` with N = sum_k N_k on every micro-batch returns
    S_k / N, and summing the K backward passes gives exactly that big-batch loss and gradient.
    The mean of per-micro-batch means, (1/K) sum_k S_k / N_k, is NOT the same: under packing N_k
    varies from micro-batch to micro-batch, and it over-weights the tokens of short micro-batches.
    So: count with `count_trained_tokens` for every micro-batch of the step BEFORE the first forward,
    sum the counts (all-reduce them across ranks), and pass the total as num_items_in_batch. The
    count stays a device tensor: no host sync. Without num_items_in_batch the micro-batch's own
    count is used (right only when the step has one micro-batch on one rank).
"""

from __future__ import annotations

import torch

from padfree.loss_chunked import DEFAULT_BUDGET_BYTES, chunk_rows_for_budget, chunked_linear_cross_entropy
from padfree.loss_logprobs import per_token_entropy, per_token_logprobs, per_token_logprobs_and_entropy

IGNORE_INDEX = -100

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "IGNORE_INDEX",
    "causal_lm_loss",
    "chunk_rows_for_budget",
    "chunked_linear_cross_entropy",
    "count_trained_tokens",
    "per_token_entropy",
    "per_token_logprobs",
    "per_token_logprobs_and_entropy",
    "shift_labels",
]


def shift_labels(labels_BT: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[B, T] targets: targets[:, t] = labels[:, t + 1], and targets[:, -1] = ignore_index."""
    return torch.nn.functional.pad(labels_BT[:, 1:], (0, 1), value=ignore_index)


def count_trained_tokens(labels_BT: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Number of trained positions after the shift, (labels[:, 1:] != ignore_index).sum().

    Returns a 0-d int64 tensor on the labels' device (no .item(): counting must not sync with the
    host). Sum it over the micro-batches of a step (and all-reduce it over ranks) and pass the total
    to `causal_lm_loss` as num_items_in_batch.
    """
    if labels_BT.dim() != 2:
        raise ValueError(f"labels_BT must be [B, T], got shape {tuple(labels_BT.shape)}; add a batch dim with [None].")
    return (labels_BT[:, 1:] != ignore_index).sum()


def causal_lm_loss(
    hidden_BTH: torch.Tensor,
    lm_head_weight_VH: torch.Tensor,
    labels_BT: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
    *,
    lm_head_bias: torch.Tensor | None = None,
    shift_labels_BT: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int | None = None,
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    compile_backend: str | None = None,
    softmax_backend: str = "auto",
) -> torch.Tensor:
    """Next-token cross-entropy of `hidden_BTH @ lm_head_weight_VH.T`, computed without [B*T, V] logits.

    hidden_BTH: [B, T, H] final hidden states (after the last norm). lm_head_weight_VH: [V, H].
    labels_BT: [B, T] unshifted labels, -100 = not trained. Or pass already-shifted
    `shift_labels_BT` (as transformers accepts for context parallelism) and labels_BT=None.
    num_items_in_batch: the step's total trained-token count (int or 0-d tensor, see the module
    docstring); None divides by this micro-batch's own count.
    compile_backend, softmax_backend: see chunked_linear_cross_entropy (None, "auto": FLA's softmax kernels on
    CUDA when installed, else PyTorch's eager ops).
    Returns a 0-d fp32 loss: summed CE / max(count, 1). The clamp makes an all-masked micro-batch give
    0 instead of transformers' 0/0 = NaN; in every other case the value equals
    transformers.loss.loss_utils.ForCausalLMLoss on the full logits.
    """
    if hidden_BTH.dim() != 3:
        raise ValueError(f"hidden_BTH must be [B, T, H], got shape {tuple(hidden_BTH.shape)}.")
    if (labels_BT is None) == (shift_labels_BT is None):
        raise ValueError("pass exactly one of labels_BT (unshifted) and shift_labels_BT (already shifted).")
    given = labels_BT if labels_BT is not None else shift_labels_BT
    if given.shape != hidden_BTH.shape[:2]:
        raise ValueError(
            f"labels shape {tuple(given.shape)} does not match hidden_BTH's [B, T] = {tuple(hidden_BTH.shape[:2])}."
        )
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1:
            raise ValueError(
                f"num_items_in_batch must be one number, got shape {tuple(num_items_in_batch.shape)}; "
                "sum the per-micro-batch counts first."
            )
        if num_items_in_batch.device.type == "cpu":
            # A count made on the host (count_trained_tokens of a CPU batch) is used as a number: copying a
            # pageable CPU tensor to the GPU waits for the stream, a sync in the middle of every step
            # (sequence-parallel 0.8b step, H200 profile, thirteenth session, docs/benchmarks.md).
            num_items_in_batch = int(num_items_in_batch)
    host_count = num_items_in_batch is not None and not isinstance(num_items_in_batch, torch.Tensor)
    if host_count and int(num_items_in_batch) < 0:
        raise ValueError(f"num_items_in_batch must be >= 0, got {num_items_in_batch}.")
    targets_BT = shift_labels(labels_BT, ignore_index) if shift_labels_BT is None else shift_labels_BT
    targets_BT = targets_BT.to(hidden_BTH.device)
    loss_sum = chunked_linear_cross_entropy(
        hidden_BTH.reshape(-1, hidden_BTH.shape[-1]),
        lm_head_weight_VH,
        targets_BT.reshape(-1),
        bias_V=lm_head_bias,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        memory_budget_bytes=memory_budget_bytes,
        compile_backend=compile_backend,
        softmax_backend=softmax_backend,
    )
    if num_items_in_batch is None:
        count = (targets_BT != ignore_index).sum()
    elif isinstance(num_items_in_batch, torch.Tensor):  # on the device: stays there
        count = num_items_in_batch.reshape(()).to(loss_sum.device)
    else:
        return loss_sum / max(int(num_items_in_batch), 1)
    # clamp, not a Python max: a device tensor stays on device (no host sync).
    return loss_sum / count.clamp(min=1)
