"""A packed training step captured once in a CUDA graph and replayed for every row.

Why: at 8,192-token rows the 0.8B step is bound by the host. Its ~3,000 kernels take 128 ms of an
H100, but launching them from Python takes 220-270 ms (docs/benchmarks.md, ninth session). A
replayed graph launches them all from one host call.

A graph replays fixed kernels with fixed arguments, so every shape and every host-side value of the
step must be the same for every row. In a packed row of fixed length T (`padfree.collate(pad_to=T)`)
only the documents change. `StaticRow` gives them a fixed shape (docs/cuda-graph-step.md):
- `cu_seqlens` holds `max_docs + 2` offsets: the row's N documents, then empty documents at T.
- `chunk_indices` is FLA's (document, 64-token chunk) table, with `T // 64 + max_docs + 1` entries.
  The entries after the real chunks name a chunk of the last (empty) document. Every FLA kernel
  masks such a chunk away, because it computes the document's length as 0.
  FLA's own padding marks unused entries with document -1, which its GDN and conv kernels do not
  check. That is why padfree pads with an empty document instead.
- Attention gets `max_seqlen = T`. The flash kernels size their grid with it and skip the blocks
  past each document's end.
Each row is checked on the host, then its token ids, labels and tables are copied into these fixed
device buffers (from pinned memory, without blocking) before the replay. The ops are told to trust
the values (`chunk_indices`, `trust_offsets`), because reading them back would sync and break
capture.

What is captured, in two graphs: the patched model's forward on the row, padfree's fused loss and
backward, which add into persistent gradients (`accumulate`); then clipping, `optimizer.step()` and
zeroing the gradients in place (`update`). Requirements, each checked before any compute:
- a model patched by `padfree.patch`, on CUDA, with FLA's kernels (the torch backends read the
  offsets on the host) and a flash attention backend (bf16 or fp16 compute);
- an optimizer built with `capturable=True` (AdamW with fused=True, capturable=True is the fast one);
- a dense model: an MoE layer sizes its work per expert on the host;
- no sequence parallelism, no torch.compile of the norms; autocast only through `autocast_dtype=`
  (captured without its weight-cast cache), not from an enclosing autocast region.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch

from padfree.loss import causal_lm_loss, count_trained_tokens
from padfree.models.causal_lm import _NO_MASKS, PACKED_KWARG
from padfree.varlen import PackedBatch, check_offsets, document_positions

__all__ = [
    "CudaGraphTrainStep", "StaticRow", "check_row", "chunk_table", "padded_offsets", "static_row_logits",
    "static_row_loss",
]

CHUNK = 64  # FLA's chunk size for the gated delta rule and the conv (both take the same table)


def padded_offsets(offsets: Sequence[int], max_docs: int) -> list[int]:
    """The row's offsets followed by empty documents at its end: `max_docs + 2` offsets in all.

    At least one empty document always follows the real ones. The padding chunks of `chunk_table`
    point at it.
    """
    offsets = [int(o) for o in offsets]
    num_docs = len(offsets) - 1
    if num_docs > max_docs:
        raise ValueError(
            f"this row holds {num_docs} documents, more than max_docs={max_docs} of the captured step; build the "
            f"step with a larger max_docs (each spare slot costs a few idle GPU blocks), or pack fewer documents per "
            "row."
        )
    return offsets + [offsets[-1]] * (max_docs + 1 - num_docs)


def chunk_slots(row_tokens: int, max_docs: int) -> int:
    """Entries of a fixed-shape chunk table: an upper bound of sum(ceil(len_i / 64)) over <= max_docs documents."""
    return math.ceil(row_tokens / CHUNK) + max_docs + 1


def chunk_table(padded: Sequence[int], slots: int) -> list[tuple[int, int]]:
    """FLA's `chunk_indices` for these offsets: (document, chunk within it) for each 64-token chunk, in order,
    then (last document, 0) up to `slots` entries. The last document must be empty (see `padded_offsets`)."""
    if padded[-1] != padded[-2]:
        raise ValueError("the offsets must end with an empty document; pad them with padded_offsets first.")
    table = [(doc, chunk) for doc, (start, end) in enumerate(zip(padded, padded[1:]))
             for chunk in range(math.ceil((end - start) / CHUNK))]  # fmt: skip
    if len(table) > slots:
        raise ValueError(f"{len(table)} chunks do not fit a table of {slots} entries; this is a padfree bug.")
    return table + [(len(padded) - 2, 0)] * (slots - len(table))


def _host_ints(x) -> list[int]:
    return [int(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def check_row(batch: dict, row_tokens: int, max_docs: int) -> list[int]:
    """The row's offsets (host ints) after every check a fixed-shape row needs; raises ValueError naming the fix.

    The ops trust a fixed-shape row's offsets (reading them back would sync), so this is their one check.
    """
    for key in ("input_ids", "labels", "cu_seq_lens_q"):
        if batch.get(key) is None:
            raise ValueError(f"the batch has no {key!r}; build it with padfree.collate(samples, pad_to={row_tokens}).")
    ids, labels = batch["input_ids"], batch["labels"]
    if tuple(ids.shape) != (1, row_tokens) or labels.shape != ids.shape:
        raise ValueError(
            f"input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} must both be [1, {row_tokens}]: the "
            f"captured step has a fixed row length; collate with padfree.collate(samples, pad_to={row_tokens})."
        )
    # Host copies of the offsets: free for padfree.collate's CPU tensors, one sync for device ones.
    offsets = _host_ints(batch["cu_seq_lens_q"])
    check_offsets(offsets, row_tokens)
    if batch.get("cu_seq_lens_k") is not None and _host_ints(batch["cu_seq_lens_k"]) != offsets:
        raise ValueError(
            "cu_seq_lens_q and cu_seq_lens_k differ; padfree packs self-attention rows, where they are equal."
        )
    if batch.get("attention_mask") is not None:
        raise ValueError(
            "a packed row takes no attention_mask: cu_seq_lens_q holds the documents. Drop attention_mask."
        )
    positions = batch.get("position_ids")
    if positions is not None:
        expected = torch.cat([torch.arange(b - a) for a, b in zip(offsets, offsets[1:])])
        if tuple(positions.shape) != (1, row_tokens) or not torch.equal(positions[0].cpu(), expected):
            raise ValueError("position_ids do not count 0, 1, 2, ... inside each document of cu_seq_lens_q; build "
                             "both with padfree.collate, or drop position_ids.")  # fmt: skip
    padded_offsets(offsets, max_docs)  # raises on too many documents
    return offsets


class StaticRow:
    """Fixed device buffers for packed rows of `row_tokens` tokens with at most `max_docs` documents.

    `fill(batch)` checks a `padfree.collate(..., pad_to=row_tokens)` batch on the host and copies it in.
    `packed` is the PackedBatch every layer reads: its values change with each fill, its tensors never do.
    """

    def __init__(self, row_tokens: int, max_docs: int, device: torch.device | str):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"a fixed-shape row is for CUDA graphs; got device {device}.")
        if row_tokens < 1 or max_docs < 1:
            raise ValueError(f"row_tokens ({row_tokens}) and max_docs ({max_docs}) must be positive.")
        self.row_tokens, self.max_docs, self.device = row_tokens, max_docs, device
        self.input_ids = torch.zeros(1, row_tokens, dtype=torch.long, device=device)
        self.labels = torch.full((1, row_tokens), -100, dtype=torch.long, device=device)
        self.cu_seqlens = torch.zeros(max_docs + 2, dtype=torch.int32, device=device)
        self.chunk_indices = torch.zeros(chunk_slots(row_tokens, max_docs), 2, dtype=torch.int32, device=device)
        self.packed = PackedBatch(self.cu_seqlens, None, row_tokens, chunk_indices=self.chunk_indices)

    def fill(self, batch: dict) -> None:
        """Check `batch`, then copy it into the buffers, queued on the current stream (no host wait)."""
        offsets = check_row(batch, self.row_tokens, self.max_docs)
        padded = padded_offsets(offsets, self.max_docs)
        table = chunk_table(padded, self.chunk_indices.shape[0])
        # pinned host tensors: the copies are asynchronous, and torch keeps each block alive until its copy has run
        for buffer, host in (
            (self.input_ids, batch["input_ids"]),
            (self.labels, batch["labels"]),
            (self.cu_seqlens, torch.tensor(padded, dtype=torch.int32)),
            (self.chunk_indices, torch.tensor(table, dtype=torch.int32)),
        ):
            host = host.to(buffer.dtype)
            buffer.copy_(host.pin_memory() if host.device.type == "cpu" else host, non_blocking=True)


def _settings(model) -> dict:
    from padfree.models.patch import _MARK, _unwrap

    settings = getattr(_unwrap(model), _MARK, None)
    if settings is None:
        raise ValueError("the model is not patched; call padfree.patch(model) first.")
    return settings


def _hidden(model, row: StaticRow) -> torch.Tensor:
    from padfree.models.patch import _unwrap

    inner = _unwrap(model)
    outputs = inner.model(
        input_ids=row.input_ids, position_ids=document_positions(row.cu_seqlens, row.row_tokens).unsqueeze(0),
        attention_mask=dict(_NO_MASKS), use_cache=False, **{PACKED_KWARG: row.packed},
    )  # fmt: skip
    return outputs.last_hidden_state


def static_row_loss(model, row: StaticRow, num_items_in_batch: torch.Tensor | None = None) -> torch.Tensor:
    """The patched model's loss on the row in `row`'s buffers: what `model(**batch, num_items_in_batch=...).loss`
    computes for the batch last filled in, through padfree's fused loss; no host read, so it can be captured."""
    from padfree.models.patch import _unwrap

    settings = _settings(model)
    inner = _unwrap(model)
    return causal_lm_loss(
        _hidden(model, row), inner.lm_head.weight, row.labels, num_items_in_batch, lm_head_bias=inner.lm_head.bias,
        softmax_backend=settings["loss_backend"],
    )  # fmt: skip


def static_row_logits(model, row: StaticRow) -> torch.Tensor:
    """[1, T, vocab] logits of the row in `row`'s buffers (the bench's correctness gate compares them per document)."""
    from padfree.models.patch import _unwrap

    return _unwrap(model).lm_head(_hidden(model, row))


@contextlib.contextmanager
def fla_tensor_cache_off():
    """FLA memoises offset helpers by tensor identity. The fixed buffers keep their identity while their values
    change, so a memoised result from one row would be replayed for the next. Off while padfree runs on them."""
    import fla.utils

    before = getattr(fla.utils, "FLA_DISABLE_TENSOR_CACHE", False)
    fla.utils.FLA_DISABLE_TENSOR_CACHE = True
    try:
        yield
    finally:
        fla.utils.FLA_DISABLE_TENSOR_CACHE = before


def check_graphable(
    model, optimizer: torch.optim.Optimizer | None, device: torch.device, autocast_dtype: torch.dtype | None = None
) -> None:
    """Refuse, before any compute, what the captured step cannot run; each message says the fix.
    `optimizer` None skips the optimizer's check (`padfree check` asks about the setup alone)."""
    from padfree.models.patch import _unwrap
    from padfree.ops._backend import resolve_backend
    from padfree.ops.attention import resolve_attention_backend

    settings = _settings(model)
    if getattr(_unwrap(model).config.get_text_config(), "num_experts", 0):
        raise ValueError(
            "the captured step covers dense models (Qwen3.5); a mixture-of-experts layer sizes its work by the tokens "
            "each expert gets, read on the host, which a CUDA graph cannot replay. Train MoE models with the eager "
            "step."
        )
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device}. Train with the eager step on CPU.")
    if settings["sequence_parallel"] is not None:
        raise ValueError("the captured step does not cover sequence parallelism; patch without sequence_parallel.")
    if settings["compile_elementwise"]:
        raise ValueError("the captured step does not cover compile_elementwise=True; patch without it.")
    if not settings["fused_loss"]:
        raise ValueError("the captured step needs padfree's fused loss; patch with fused_loss=True (the default).")
    if resolve_backend(settings["backend"], device) != "fla":
        raise ValueError(
            "the captured step needs FLA's kernels for the Gated DeltaNet layers (the torch backend reads the "
            "offsets on the host); install flash-linear-attention (pip install 'padfree[fla]') and patch with "
            "backend='auto' or 'fla'."
        )
    compute = autocast_dtype or next(model.parameters()).dtype
    probe = torch.empty(1, 1, 1, dtype=compute, device=device)
    if resolve_attention_backend(settings["attention_backend"], probe) == "sdpa_per_doc":
        raise ValueError(
            f"the captured step needs a flash attention kernel, which runs in bf16 or fp16, but the step would compute "
            f"in {str(compute).removeprefix('torch.')}; cast the model to bf16 or pass autocast_dtype=torch.bfloat16 "
            "(and patch with attention_backend='auto')."
        )
    if torch.is_autocast_enabled("cuda"):
        raise ValueError(
            "the captured step was built inside an autocast region; pass autocast_dtype=torch.bfloat16 instead (the "
            "step then captures autocast without its weight-cast cache, which a graph cannot keep)."
        )
    for group in optimizer.param_groups if optimizer is not None else []:
        if not group.get("capturable", False):
            raise ValueError(
                f"{type(optimizer).__name__} was built without capturable=True, so its step cannot be captured; build "
                "it as torch.optim.AdamW(model.parameters(), lr=..., fused=True, capturable=True)."
            )


class CudaGraphTrainStep:
    """Training steps on packed rows, replayed from two CUDA graphs.

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True, capturable=True)
        step = padfree.CudaGraphTrainStep(model, optimizer, row_tokens=8192, max_docs=64)
        for batch in loader:           # padfree.collate(samples, pad_to=8192), on the host
            loss = step(batch)         # one row, one optimizer step

    With gradient accumulation, call the two halves yourself:

        for rows in steps:
            count = sum(int(padfree.count_trained_tokens(r["labels"])) for r in rows)
            losses = [step.accumulate(r, num_items_in_batch=count) for r in rows]
            grad_norm = step.update()

    - `accumulate(batch, num_items_in_batch)`: forward, padfree's fused loss divided by
      num_items_in_batch (default: the row's own trained-token count), backward; the gradients add up
      in place. Returns the row's loss, a 0-d device tensor.
    - `update()`: clips the gradients to `max_grad_norm` (if given), runs `optimizer.step()`, zeroes
      the gradients. Returns the gradient norm before clipping (a 0-d device tensor; None without
      clipping).

    The first `eager_steps` optimizer steps run eagerly on the fixed buffers. They train, and they let
    FLA's autotuner and tilelang compile every kernel outside the capture. The next `accumulate`
    captures the first graph, the next `update` the second; later calls only fill buffers and replay.
    `autocast_dtype` (e.g. torch.bfloat16 for fp32 weights) runs the forward under autocast without
    its weight-cast cache.

    A float learning rate is baked into the graph, and changing it after capture raises. To schedule
    it, pass the learning rate as a CUDA tensor: torch's LR schedulers then update it in place.
    """

    def __init__(
        self, model, optimizer: torch.optim.Optimizer, row_tokens: int, max_docs: int, eager_steps: int = 1, *,
        autocast_dtype: torch.dtype | None = None, max_grad_norm: float | None = None,
    ):  # fmt: skip
        device = next(model.parameters()).device
        check_graphable(model, optimizer, device, autocast_dtype)
        if eager_steps < 1:
            raise ValueError(
                f"eager_steps={eager_steps}: at least one eager step must tune the kernels before capture."
            )
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm}: give a positive norm, or None for no clipping.")
        self.model, self.optimizer, self.eager_steps = model, optimizer, eager_steps
        self.autocast_dtype, self.max_grad_norm = autocast_dtype, max_grad_norm
        self.row = StaticRow(row_tokens, max_docs, device)
        self.num_items = torch.ones((), dtype=torch.long, device=device)  # the loss's divisor, refilled per row
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.rows_graph: torch.cuda.CUDAGraph | None = None
        self.update_graph: torch.cuda.CUDAGraph | None = None
        self.updates = 0  # optimizer steps taken
        self._loss: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None
        self._lr_at_capture: list | None = None

    @property
    def captured(self) -> bool:
        return self.rows_graph is not None and self.update_graph is not None

    # --- what the graphs hold -------------------------------------------------------------------------
    def _row_body(self) -> torch.Tensor:
        autocast = torch.autocast("cuda", dtype=self.autocast_dtype or torch.bfloat16,
                                  enabled=self.autocast_dtype is not None, cache_enabled=False)  # fmt: skip
        with autocast:
            loss = static_row_loss(self.model, self.row, self.num_items)
        loss.backward()
        return loss.detach()

    def _update_body(self) -> torch.Tensor | None:
        norm = None
        if self.max_grad_norm is not None:
            grads = [p for p in self.params if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        for p in self.params:  # zeroed in place, never freed: the captured backward accumulates into them
            if p.grad is not None:
                p.grad.zero_()
        return norm

    # --- running them ---------------------------------------------------------------------------------
    def _eager(self, body):
        """Run `body` eagerly on a side stream, as PyTorch's whole-network capture recipe warms up."""
        device = self.row.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            result = body()
        torch.cuda.current_stream(device).wait_stream(side)
        return result

    def _capture(self, body, pool=None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            result = body()
        graph.replay()  # capture only records: this runs it
        return graph, result

    def _check_lr(self) -> None:
        if self._lr_at_capture is None:
            return
        for group, lr in zip(self.optimizer.param_groups, self._lr_at_capture):
            if not isinstance(lr, torch.Tensor) and group["lr"] != lr:
                raise ValueError(
                    f"the learning rate changed from {lr} to {group['lr']} after the step was captured, and a float "
                    "learning rate is baked into the graph; build the optimizer with "
                    "lr=torch.tensor(lr, device='cuda') to schedule it."
                )

    def accumulate(self, batch: dict, num_items_in_batch: int | None = None) -> torch.Tensor:
        """Forward and backward of one row (a padfree.collate batch on the host); returns its loss."""
        self.row.fill(batch)
        count = num_items_in_batch if num_items_in_batch is not None else count_trained_tokens(batch["labels"])
        self.num_items.fill_(int(count))  # a 0-d fill from a host int: no wait (the loss clamps 0 to 1)
        with fla_tensor_cache_off():
            if self.rows_graph is not None:
                self.rows_graph.replay()
            elif self.updates < self.eager_steps:
                self._loss = self._eager(self._row_body)
            else:
                self.rows_graph, self._loss = self._capture(self._row_body)
        return self._loss.clone()

    def update(self) -> torch.Tensor | None:
        """Clip (if asked), step the optimizer, zero the gradients; returns the norm before clipping."""
        self._check_lr()
        if self.update_graph is not None:
            self.update_graph.replay()
        elif self.rows_graph is None:  # still eager
            self._grad_norm = self._eager(self._update_body)
        else:
            pool = self.rows_graph.pool()
            self.update_graph, self._grad_norm = self._capture(self._update_body, pool)
            self._lr_at_capture = [group["lr"] for group in self.optimizer.param_groups]
        self.updates += 1
        return None if self._grad_norm is None else self._grad_norm.clone()

    def __call__(self, batch: dict) -> torch.Tensor:
        """One row, one optimizer step; returns the row's loss."""
        loss = self.accumulate(batch)
        self.update()
        return loss
