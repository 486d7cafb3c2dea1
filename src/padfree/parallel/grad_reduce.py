"""The gradient sum over a group, run during the backward: flat buckets, each all-reduced as soon as its last
gradient has accumulated, on NCCL's stream while the backward computes the earlier layers.

Why: `reduce_gradients` runs after the whole backward. It concatenates every gradient into a new flat tensor,
all-reduces it with the GPU otherwise idle and copies the sums back, ~300 copies. In the captured sp=2 step of the
0.8B shape that was 4.5 ms of NCCL plus ~3 ms of concatenation and copy-back on the critical path of a 267 ms step
(2x H200 profile, docs/benchmarks.md, fourteenth session).

Here every `.grad` is a view into one flat buffer per dtype, installed before the first backward. Autograd then
accumulates into the views in place (it only allocates a gradient where `.grad` is None), so the buffer always
holds the gradients and needs no copy either way. A bucket is a contiguous slice of the buffer; a
post-accumulate-grad hook counts its gradients, and the last one launches its all-reduce. Measured against the sum
after the backward, in the same processes: 0.852 and 0.880 against 0.845 and 0.873 of one GPU's throughput per
GPU, each of the six rounds ahead (two runs, 2x H200, 0.8B; docs/benchmarks.md, fifteenth session).

Why not DistributedDataParallel, which does the same: its reducer is prepared in its own forward, and the
captured step (padfree.static_row_loss) calls the model's parts, not the wrapper; it averages where padfree's
losses need the sum (each rank's loss is its share of the row's); and it rebuilds its buckets after the first
iteration, which would change the memory a captured graph writes.

Its communicator: the layers' own. c10d queues a group's collectives on one NCCL stream, so a bucket's all-reduce
can delay the backward's next Ulysses all-to-all (their kernel time rose from 9.2 to 12.1 ms). A communicator of
its own (a new group with the same ranks) took that back to 9.1 ms, but the step's throughput did not move
(0.876 against 0.880 of one GPU per GPU; 2x H200, 0.8B, docs/benchmarks.md, fifteenth session), so the reducer
does without the extra group.

Order: every rank must launch the same collectives in the same order. Buckets launch strictly by index (a
ready bucket waits for the ones before it), and `finish` launches any not yet launched (parameters without a
gradient this backward), so the order never depends on when the hooks fire.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["OverlappedGradReduce", "overlapped_grad_reduce"]

# Each view starts on a multiple of this many bytes: the fused optimizers' vectorised loads want aligned tensors.
_ALIGN_BYTES = 128


class OverlappedGradReduce:
    """Sum the gradients of `params` over `group` during the backward.

        reduce = overlapped_grad_reduce(model, group)   # once; every .grad becomes a view into flat buffers
        reduce.arm()                                    # before each backward that should be summed
        loss.backward()                                 # buckets all-reduce as their gradients complete
        reduce.finish()                                 # launches the rest, makes the stream wait for all

    A backward outside arm()/finish() accumulates without any collective (the hooks do nothing).

    Accumulating several backwards before one optimizer step: each backward's all-reduce also sums what the
    buffer held before it. Call `prescale()` before every backward after the first since the last zeroing: it
    divides the (already summed, equal on all ranks) gradients by the group size, so the sum restores them.
    """

    def __init__(self, params, group: dist.ProcessGroup | None = None, bucket_mb: float = 25.0):
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb={bucket_mb}: give a positive bucket size in MiB.")
        self.group = group
        self.size = dist.get_world_size(group)
        params = list(dict.fromkeys(p for p in params if p.requires_grad))  # tied weights once
        # The backward produces the last layers' gradients first: lay the buffer out in reverse, so the
        # buckets complete front to back.
        params.reverse()
        self.buffers: list[torch.Tensor] = []
        self.buckets: list[torch.Tensor] = []  # views of the buffers
        self._views: dict[torch.nn.Parameter, torch.Tensor] = {}
        self._bucket_of: dict[torch.nn.Parameter, int] = {}
        self._bucket_sizes: list[int] = []  # parameters per bucket
        # One buffer per (device, dtype), bucket indices running on across them: a model of mixed dtypes launches the
        # second buffer's buckets only after all of the first's (order before overlap); a bf16 model has one buffer.
        by_kind: dict[tuple, list] = {}
        for p in params:
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        cap = int(bucket_mb * 2**20)
        for (device, dtype), group_params in by_kind.items():
            align = max(1, _ALIGN_BYTES // dtype.itemsize)
            offsets, end = [], 0
            for p in group_params:
                offsets.append(end)
                end += -(-p.numel() // align) * align
            buffer = torch.zeros(end, dtype=dtype, device=device)
            self.buffers.append(buffer)
            start, count = 0, 0
            for i, (p, offset) in enumerate(zip(group_params, offsets)):
                self._views[p] = buffer[offset : offset + p.numel()].view_as(p)
                self._bucket_of[p] = len(self.buckets)
                count += 1
                stop = offsets[i + 1] if i + 1 < len(offsets) else end
                if (stop - start) * dtype.itemsize >= cap or i + 1 == len(group_params):
                    self.buckets.append(buffer[start:stop])
                    self._bucket_sizes.append(count)
                    start, count = stop, 0
        self._params = params
        self.install()
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]
        self._armed = False
        self._pending: list[int] = []  # per bucket: its gradients not yet accumulated in this backward
        self._seen: set = set()  # parameters whose gradient this backward has accumulated
        self._next = 0  # the next bucket to launch
        self._works: list = []
        self.launched_during_backward = 0  # buckets launched by hooks in the last armed backward (tests read it)

    def install(self) -> None:
        """Make every parameter's .grad its view (keeping the values of a gradient that is not); done at
        construction and on every arm(), so a zero_grad(set_to_none=True) in between does no harm."""
        for p in self._params:
            view = self._views[p]
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
            else:
                continue
            p.grad = view

    def arm(self) -> None:
        on_cuda = any(buffer.is_cuda for buffer in self.buffers)
        if not (on_cuda and torch.cuda.is_current_stream_capturing()):  # a capture would record the reinstall
            self.install()
        self._pending = list(self._bucket_sizes)
        self._seen = set()
        self._next, self._works, self.launched_during_backward = 0, [], 0
        self._armed = True

    def _launch_ready(self, everything: bool = False) -> None:
        """Launch the buckets from the next one on while they are complete (all of them with `everything`)."""
        while self._next < len(self.buckets) and (everything or self._pending[self._next] == 0):
            self._works.append(dist.all_reduce(self.buckets[self._next], group=self.group, async_op=True))
            self._next += 1

    def _on_grad(self, p: torch.nn.Parameter) -> None:
        if not self._armed:
            return
        if p in self._seen:  # a second accumulation would have been missed by an all-reduce already launched
            raise RuntimeError(
                f"a gradient of shape {tuple(p.shape)} accumulated twice in one backward (reentrant checkpointing?), "
                "so its bucket may have been summed before the second part; use non-reentrant checkpointing "
                "(padfree.checkpointing) or padfree.parallel.reduce_gradients after the backward."
            )
        self._seen.add(p)
        b = self._bucket_of[p]
        self._pending[b] -= 1
        if self._pending[b] == 0:
            before = self._next
            self._launch_ready()
            self.launched_during_backward += self._next - before

    def finish(self) -> None:
        """Launch the buckets not launched yet, in order, and make the current stream wait for every all-reduce."""
        if not self._armed:
            raise RuntimeError("finish() without arm(): call arm() before the backward whose gradients it sums.")
        self._launch_ready(everything=True)
        for work in self._works:
            work.wait()
        self._works, self._armed = [], False

    def prescale(self) -> None:
        """Divide the gradients by the group size (before an accumulating backward; see the class docstring)."""
        for buffer in self.buffers:
            buffer.div_(self.size)

    def zero_(self) -> None:
        for buffer in self.buffers:
            buffer.zero_()

    def remove(self) -> None:
        """Detach the hooks; the .grad views stay (plain tensors from then on)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def overlapped_grad_reduce(model: torch.nn.Module, group: dist.ProcessGroup | None = None) -> OverlappedGradReduce:
    """The model's OverlappedGradReduce over `group`, built on first use and kept on the model: several captured
    steps on one model (a benchmark's setups) must share one set of buffers, or one step's graph would write
    gradients the other no longer reads. Kept on the unwrapped model, so a wrapper (PEFT) and the model it wraps
    share it too."""
    from padfree.models.patch import _unwrap

    reducers = _unwrap(model).__dict__.setdefault("_padfree_grad_reduce", {})
    if group not in reducers:
        reducers[group] = OverlappedGradReduce(model.parameters(), group)
    return reducers[group]

