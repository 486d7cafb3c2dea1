"""A packed training step captured once in a CUDA graph and replayed for every row.

Why: at 8,192-token rows the 0.8B step is bound by the host. Its ~3,000 kernels take 128 ms of an
H100, but launching them from Python takes 220-270 ms (docs/benchmarks.md, ninth session). A
replayed graph launches them all from one host call: 2.2-2.5x transformers' packed step, 96-97%
GPU busy (docs/benchmarks.md, tenth session).

The rows it replays on have a fixed shape: padfree.static_row.

What is captured, in two graphs: the patched model's forward on the row, padfree's fused loss and
backward, which add into persistent gradients (`accumulate`); then clipping, `optimizer.step()` and
zeroing the gradients in place (`update`). Requirements, each checked before any compute:
- a model patched by `padfree.patch`, on CUDA, with FLA's kernels (the torch backends read the
  offsets on the host) and a flash attention backend (bf16 or fp16 compute);
- an optimizer built with `capturable=True` (AdamW with fused=True, capturable=True is the fast one);
- a dense model: an MoE layer sizes its work per expert on the host;
- no torch.compile of the norms; autocast only through `autocast_dtype=` (captured without its
  weight-cast cache), not from an enclosing autocast region;
- sequence parallelism only as Ulysses on c10d (or symmetric-memory) collectives over NCCL (see below).

Sequence parallelism: a sharded step launches more kernels per GPU than an unsharded one (the
exchanges, their copies), and each collective waits for the slowest rank's host, so the eager step
is host-bound (docs/benchmarks.md, thirteenth session). NCCL collectives can be captured: every
rank captures the same sequence of them, and a replay runs them on the stream in that order.
Ulysses needs only the whole row's offsets on the device (it runs the ops on all T tokens of its
heads), so its step fits a fixed-shape row. Context parallelism does not: it cuts each rank's
documents on the host. The captured step sums the gradients over the sequence-parallel group
during the backward, bucket by bucket as they complete (padfree.parallel.grad_reduce, captured
with the backward; `overlap_grad_reduce=False`: after it, in the update graph); data parallelism
on top of it is not covered.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from padfree.loss import count_trained_tokens
from padfree.parallel.grad_reduce import overlapped_grad_reduce
from padfree.parallel.mesh import reduce_gradients
from padfree.static_row import StaticRow, fla_tensor_cache_off, patched_settings, static_row_loss

__all__ = ["CudaGraphTrainStep", "check_graphable", "context_parallel_layers"]


def check_graphable(
    model, optimizer: torch.optim.Optimizer | None, device: torch.device, autocast_dtype: torch.dtype | None = None
) -> None:
    """Refuse, before any compute, what the captured step cannot run; each message says the fix.
    `optimizer` None skips the optimizer's check (`padfree check` asks about the setup alone)."""
    from padfree.models.patch import _unwrap
    from padfree.ops._backend import resolve_backend
    from padfree.ops.attention import resolve_attention_backend

    settings = patched_settings(model)
    if getattr(_unwrap(model).config.get_text_config(), "num_experts", 0):
        raise ValueError(
            "the captured step covers dense models (Qwen3.5); a mixture-of-experts layer sizes its work by the tokens "
            "each expert gets, read on the host, which a CUDA graph cannot replay. Train MoE models with the eager "
            "step."
        )
    sp = settings["sequence_parallel"]
    if sp is not None:
        _check_graphable_sp(sp)
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device; the model is on {device}. Train with the eager step on CPU.")
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


def context_parallel_layers(sp) -> list[str]:
    """The layer kinds a patched SequenceParallel runs with context parallelism, which a graph cannot replay."""
    return sorted(kind for kind, mode in sp.layer_modes.items() if mode != "ulysses")


def _check_graphable_sp(sp) -> None:
    """Refuse the sequence-parallel setups a graph cannot replay (see the module docstring)."""
    if context := context_parallel_layers(sp):
        raise ValueError(
            f"the captured step runs sequence parallelism as Ulysses only, but the {' and '.join(context)} layers "
            f"were patched for context parallelism, which cuts each row's documents on the host; patch with "
            f"SequenceParallel(group, mode='ulysses') (it needs the degree to divide the heads), or train with the "
            f"eager step."
        )
    if sp.collectives == "functional":
        raise ValueError(
            "the captured step needs collectives='c10d' or 'symmetric_memory', got 'functional' (PyTorch's functional "
            "collectives return tensor subclasses waited for on the host); patch with SequenceParallel(group, "
            "mode='ulysses')."
        )
    if dist.get_backend(sp.group) != "nccl":
        raise ValueError(
            f"the captured sharded step needs NCCL collectives, but the sequence-parallel group runs on "
            f"{dist.get_backend(sp.group)!r}; initialise torch.distributed with init_process_group('nccl')."
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

    With a model patched for sequence parallelism (Ulysses), every rank of the group calls the step
    with the same whole row (padfree.collate(samples, pad_to=row_tokens)); each keeps its slice.
    The loss returned is the row's, summed over the group. The gradients are summed over the group
    during each row's backward (overlap_grad_reduce=True: every .grad becomes a view into flat
    buffers, padfree.parallel.grad_reduce); with overlap_grad_reduce=False, at the start of `update`.
    `row_tokens` is the whole row's length, a multiple of the degree.
    """

    def __init__(
        self, model, optimizer: torch.optim.Optimizer, row_tokens: int, max_docs: int, eager_steps: int = 1, *,
        autocast_dtype: torch.dtype | None = None, max_grad_norm: float | None = None,
        overlap_grad_reduce: bool = True,
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
        self.sp = patched_settings(model)["sequence_parallel"]
        self.row = StaticRow(row_tokens, max_docs, device, self.sp)
        # Under sequence parallelism: the gradient sum over the group runs during the backward, bucket by bucket
        # (padfree.parallel.grad_reduce); overlap_grad_reduce=False sums after it, in the update graph.
        use_overlap = self.sp is not None and overlap_grad_reduce
        self.grad_reduce = overlapped_grad_reduce(model, self.sp.group) if use_overlap else None
        self._rows_since_update = 0
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
        if self.grad_reduce is not None:
            self.grad_reduce.arm()
        loss.backward()
        if self.grad_reduce is not None:
            self.grad_reduce.finish()
        loss = loss.detach()
        if self.sp is not None:  # this rank's share -> the row's loss, on every rank
            dist.all_reduce(loss, group=self.sp.group)
        return loss

    def _update_body(self) -> torch.Tensor | None:
        norm = None
        if self.sp is not None and self.grad_reduce is None:  # each rank's backward covered its share of the loss
            reduce_gradients(self.model, self.sp.group)  # the gradient is the sum
        if self.max_grad_norm is not None:
            with_grads = [p for p in self.params if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(with_grads, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        # Zeroed in place, never freed: the captured backward accumulates into them. One multi-tensor kernel per
        # dtype instead of one fill per parameter (~300 at 0.8b: the profile's 405 fills took 1.3 ms of 129).
        if self.grad_reduce is not None:  # its flat buffers: one fill each
            self.grad_reduce.zero_()
        elif grads := [p.grad for p in self.params if p.grad is not None]:  # the foreach op refuses an empty list
            torch._foreach_zero_(grads)
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
        if self.grad_reduce is not None and self._rows_since_update:
            self.grad_reduce.prescale()  # outside the graph: only rows after the first of an accumulation need it
        with fla_tensor_cache_off():
            if self.rows_graph is not None:
                self.rows_graph.replay()
            elif self.updates < self.eager_steps:
                self._loss = self._eager(self._row_body)
            else:
                self.rows_graph, self._loss = self._capture(self._row_body)
        self._rows_since_update += 1
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
        self._rows_since_update = 0
        return None if self._grad_norm is None else self._grad_norm.clone()

    def close(self) -> None:
        """Free the graphs and their memory (a later call captures anew). Under sequence parallelism, call it before
        torch.distributed.destroy_process_group(): with graphs that captured NCCL collectives still alive, two
        processes hung in their teardown (torch 2.11, 2x H200, docs/benchmarks.md, fourteenth session)."""
        torch.cuda.synchronize(self.row.device)
        self.rows_graph = self.update_graph = None
        self._loss = self._grad_norm = None

    def __call__(self, batch: dict) -> torch.Tensor:
        """One row, one optimizer step; returns the row's loss."""
        loss = self.accumulate(batch)
        self.update()
        return loss
