"""One path's training-step throughput: the samples every path shares, each path's batches, the timing.

Paths (PATHS), each a fresh model from the same seed, trained with the same dtype, activation
checkpointing and AdamW (fused on CUDA) on the same samples:
    upstream_padded  the unpatched model, batches of PADDED_BATCH samples right-padded to the longest,
                     with an attention_mask (the usual HF Trainer setup)
    upstream_packed  the unpatched model on padfree.collate's rows (transformers' own cu_seq_lens_* path)
    padfree          the patched model on the same rows (its default settings: on CUDA with FLA installed,
                     FLA's fused norms and SwiGLU, padfree.models.fused)
    padfree_eager_norms the same, patched with elementwise_backend="torch": upstream's eager norms and
                     MLPs, the baseline of the fused ones. Not in the default paths.
    padfree_torch_loss the same, patched with loss_backend="torch": the loss's per-chunk softmax in
                     PyTorch's ops, the baseline of FLA's cross-entropy kernels. Not in the default paths.
    padfree_graphed  the padfree path with each step (forward, loss, backward, AdamW with capturable=True)
                     captured once in a CUDA graph and replayed per row (padfree.cuda_graph), so the host
                     launches one graph instead of ~3,000 kernels. CUDA with FLA only; not in the default
                     paths. Its warm-up trains eagerly, then captures; its batches stay on the host and
                     are copied in inside the timed step.
    padfree_graphed_fla_conv the graphed path patched with backend="fla": FLA's conv kernels instead of
                     padfree's own (padfree.ops.conv1d.triton_kernels), their baseline. Not in the default
                     paths.
    padfree_compiled the same, patched with compile_elementwise=True (padfree.models.compiled): its
                     norms and MLPs under torch.compile; compiled in the warm-up steps. Not in the
                     default paths (`--paths` adds it).

The samples are the documents of `steps + warmup` packed rows drawn from long-tailed (lognormal)
lengths; the padded path trains exactly those documents, the warm-up rows' documents in its warm-up
steps, so the timed real tokens are identical across paths. Only real (non-padding) tokens count.
On CUDA the eager paths first run forward + backward once, untimed and without an optimizer step, on
every padded batch shape the warm-up did not cover (`unseen_shapes`: kernels are tuned and compiled per
shape) and on every timed packed row (`untimed_first`), so that one-off compiles stay out of the timing.

Metrics of a path:
    real_tokens_per_s    real tokens of the timed steps / their wall time (CUDA synchronised)
    packing_efficiency   real tokens / slots (padded: batch size x longest sample; packed: row length)
    mfu                  6 * params * real_tokens_per_s / the GPU's dense bf16 peak (None on CPU)
    attention_mfu        attention_flops / seconds / the same peak, reported apart from mfu (see below)
    peak_mem_gib         torch.cuda.max_memory_allocated over the timed steps (padfree_graphed: from its first
                         warm-up step on, since its graph's memory is allocated at capture); None on CPU, where only the
                         process-wide RSS high-water mark exists and it cannot be reset between paths
    gpu_busy             one more step's summed kernel time (torch.profiler) over the mean timed step: well
                         below 1 means the step waits on the host's Python. CUDA and packed paths only
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

import torch

import padfree
from padfree.checkpointing import enable_checkpointing
from padfree.corpus import lognormal_lengths
from padfree.packing import pack
from padfree.train.metrics import mfu, peak_bf16_flops

PATHS = (
    "upstream_padded", "upstream_packed", "padfree", "padfree_compiled", "padfree_eager_norms", "padfree_torch_loss",
    "padfree_graphed", "padfree_graphed_fla_conv",
)
DEFAULT_PATHS = PATHS[:3]
# padfree.patch's settings of each padfree path (the other paths stay unpatched)
PATCH_SETTINGS = {
    "padfree": {},
    "padfree_compiled": {"compile_elementwise": True},
    "padfree_eager_norms": {"elementwise_backend": "torch"},
    "padfree_torch_loss": {"loss_backend": "torch"},
    "padfree_graphed": {},
    "padfree_graphed_fla_conv": {"backend": "fla"},
}
# trained through padfree.cuda_graph.CudaGraphTrainStep
GRAPHED_PATHS = ("padfree_graphed", "padfree_graphed_fla_conv")
# The baseline is batches of 4. The installed Trainer's default per_device_train_batch_size is 8,
# which pads more; 4 is the kinder baseline for upstream.
PADDED_BATCH = 4
LENGTH_SIGMA = 1.0  # lognormal spread of log-length: ~16% of samples above e * median


@dataclass
class Workload:
    """The documents every path trains: `rows[:warmup]` warm up, `rows[warmup:]` are timed."""

    samples: list[torch.Tensor]  # token ids, one 1-D tensor per document
    rows: list[list[int]]  # packed rows, as indices into samples
    warmup: int
    row_tokens: int

    def lengths(self, rows: list[list[int]]) -> list[int]:
        return [len(self.samples[i]) for row in rows for i in row]


def make_workload(vocab: int, row_tokens: int, steps: int, warmup: int, median_len: float, seed: int) -> Workload:
    """Lognormal lengths (clipped to the row), packed best-fit decreasing; the first steps + warmup rows of those
    at least half full."""
    mean = median_len * math.exp(LENGTH_SIGMA**2 / 2)
    num = 2 * math.ceil((steps + warmup) * row_tokens / min(mean, row_tokens)) + 8  # 2x: spare rows
    lengths = lognormal_lengths(num, median=median_len, sigma=LENGTH_SIGMA, max_len=row_tokens, seed=seed)
    # Rows in shuffled order, leaving out rows under half full: the packing's leftover row (at the 0.8b defaults 219
    # of 8,192 tokens) comes once per epoch in training, but as one of the ~10 rows here it cost every path a full
    # row's time for 3% of its tokens (timed packing efficiency 87.8% instead of ~99.9%, until 2026-11-27).
    plan = pack(lengths, row_tokens, seed=seed)
    rows = [row for row, real in zip(plan.rows, plan.row_lengths()) if 2 * real >= row_tokens][: steps + warmup]
    if len(rows) < steps + warmup:  # cannot happen with 2x spare samples; never time fewer steps silently
        raise RuntimeError(f"packed only {len(rows)} rows for {steps} + {warmup} steps; this is a padfree bug.")
    generator = torch.Generator().manual_seed(seed)
    samples = [torch.randint(3, vocab, (int(n),), generator=generator) for n in lengths]  # 0-2: special ids
    return Workload(samples, rows, warmup, row_tokens)


def attention_flops(config, lengths: list[int]) -> float:
    """Useful FLOPs of softmax attention, forward + backward, for documents of these lengths.

    Per attention layer and head of dim d, a causal document of L tokens needs QK^T and PV, each
    2 * L^2 * d FLOPs unmasked, halved by causality: 2 * L^2 * d forward, twice that backward:
        6 * (attention layers) * heads * d * sum(L^2).
    Useful work only: the padded path's FLOPs on padding and the GDN recurrence are not counted
    (the GDN projections are in 6 * params).
    """
    layers = config.layer_types.count("full_attention")
    return 6.0 * layers * config.num_attention_heads * config.head_dim * sum(n * n for n in lengths)


def _batches(path: str, workload: Workload, rows: list[list[int]]) -> list[tuple[dict, int]]:
    """(batch, slots) per optimizer step over the documents of `rows`."""
    if path == "upstream_padded":
        docs = [workload.samples[i] for i in sorted(i for row in rows for i in row)]  # dataset order
        out = []
        for start in range(0, len(docs), PADDED_BATCH):
            group = docs[start : start + PADDED_BATCH]
            ids = torch.zeros(len(group), max(len(d) for d in group), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, doc in enumerate(group):
                ids[r, : len(doc)], mask[r, : len(doc)] = doc, 1
            out.append(({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)},
                        ids.numel()))  # fmt: skip
        return out
    pad_to = workload.row_tokens  # static row length: one dummy document pads the rest
    return [(padfree.collate([{"input_ids": workload.samples[i]} for i in row], pad_to=pad_to), pad_to) for row in rows]


def untimed_first(path: str, warm: list[dict], timed: list[dict]) -> list[dict]:
    """The timed batches an eager CUDA path runs once, untimed, before its timing: the padded path's new shapes
    (`unseen_shapes`), and every packed row. A packed row has the same shape as any other, but FLA hands the
    gated delta rule to FlashQLA when flash_qla is installed, and FlashQLA compiles a TileLang kernel per
    variant it picks for a row (its value-block width follows the row's document count, its context
    parallelism the row's lengths): ~20 s each. In the twentieth session's first run with flash_qla installed five compiles ran during
    upstream's packed path (its warm-up rows did not cover them), which timed it at 506 tokens/s
    (docs/benchmarks.md)."""
    return unseen_shapes(warm, timed) if path == "upstream_padded" else list(timed)


def unseen_shapes(warm: list[dict], timed: list[dict]) -> list[dict]:
    """One timed batch per input shape that no warm-up batch has, in order of first appearance.

    On CUDA the kernels (FLA's Triton autotuning, tilelang, cuBLAS heuristics) are tuned or compiled
    once per new shape; run untimed first, these batches keep that one-off cost out of the timed
    steps, so every path is timed in its steady state. Only the padded path has more than one shape.
    """
    seen = {tuple(b["input_ids"].shape) for b in warm}
    out = []
    for batch in timed:
        shape = tuple(batch["input_ids"].shape)
        if shape not in seen:
            seen.add(shape)
            out.append(batch)
    return out


def build_model(config, seed: int, device: torch.device, dtype: torch.dtype, checkpointing: bool, patch: dict | None):
    """The same random init for every path: the seed is set right before construction. `patch`:
    padfree.patch's settings, or None for the unpatched model."""
    from transformers import Qwen3_5ForCausalLM

    torch.manual_seed(seed)
    # Drawn on the device itself: on CPU the ~4B shape's random init alone takes about a minute per path.
    # The same seed on the same device gives every path the same weights.
    with torch.device(device):
        model = Qwen3_5ForCausalLM(config)
    model = model.to(dtype=dtype).train()
    model.config.use_cache = False  # training: no KV / recurrent-state cache
    if patch is not None:
        padfree.patch(model, **patch)
    if checkpointing:
        enable_checkpointing(model)
    return model


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_seconds(fn, device: torch.device) -> float:
    """Summed GPU kernel time of one call of `fn` (torch.profiler, CUDA activity). Over a step's wall time it
    is the share of the step the GPU was busy; the rest the GPU waited, mostly for the host to launch the
    next kernel (docs/benchmarks.md, ninth session)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        _sync(device)
    return sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA) / 1e6


def measure(path: str, config, workload: Workload, device: torch.device, dtype: torch.dtype,
            checkpointing: bool, seed: int) -> dict:  # fmt: skip
    """Train `path` on the workload; warm-up steps first, untimed. Raises what the model raises."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose from {', '.join(PATHS)}.")
    graphed = path in GRAPHED_PATHS
    # A graphed step copies each row in itself (from pinned host memory), as it would in training.
    move = (lambda b: b) if graphed else (lambda b: _to(b, device))
    warm = [move(b) for b, _ in _batches(path, workload, workload.rows[: workload.warmup])]
    timed = [(move(b), slots) for b, slots in _batches(path, workload, workload.rows[workload.warmup :])]
    lengths = workload.lengths(workload.rows[workload.warmup :])
    real, slots, num_steps = sum(lengths), sum(s for _, s in timed), len(timed)
    model = build_model(config, seed, device, dtype, checkpointing, PATCH_SETTINGS.get(path))
    if graphed:
        from padfree.cuda_graph import CudaGraphTrainStep

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True, capturable=True)
        max_docs = max(b["cu_seq_lens_q"].numel() - 1 for b in [*warm, *(b for b, _ in timed)])
        # eager warm-up steps tune the kernels, the last one captures (run_bench asks for --warmup >= 2)
        step = CudaGraphTrainStep(model, optimizer, workload.row_tokens, max_docs, eager_steps=workload.warmup - 1)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

        def step(batch):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    try:
        if graphed and device.type == "cuda":
            # The graph's memory pool is allocated while it is captured (the last warm-up step) and only reused
            # by the timed replays, so its peak is counted from here: warm-up, capture and replays.
            torch.cuda.reset_peak_memory_stats(device)
        for batch in warm:
            step(batch)
        if device.type == "cuda" and not graphed:  # untimed, no optimizer step: the weights stay as warm-up left them
            for batch in untimed_first(path, warm, [b for b, _ in timed]):
                model(**batch).loss.backward()
                optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if device.type == "cuda" and not graphed:
            torch.cuda.reset_peak_memory_stats(device)  # params and optimizer state stay counted
        start = time.perf_counter()
        for batch, _ in timed:
            loss = step(batch)
        _sync(device)
        seconds = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        final_loss = loss.item()
        # After the timing, so the profiler's own cost never lands in it. Packed rows only: their steps all
        # have one shape, so one step's kernels stand for every step's; a padded batch's do not.
        busy = None
        if device.type == "cuda" and path != "upstream_padded":
            busy = kernel_seconds(lambda: step(timed[0][0]), device) / (seconds / num_steps)
    finally:
        del model, optimizer, warm, timed
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peak_flops = peak_bf16_flops(device) if dtype == torch.bfloat16 else None
    return {
        "path": path,
        "real_tokens_per_s": real / seconds,
        "real_tokens": real,
        "slots": slots,
        "packing_efficiency": real / slots,
        "optimizer_steps": num_steps,
        "seconds": seconds,
        "mfu": mfu(params, real / seconds, device, dtype),
        "attention_mfu": attention_flops(config, lengths) / seconds / peak_flops if peak_flops else None,
        "peak_mem_gib": peak_mem,
        "gpu_busy": busy,
        "params": params,
        "final_loss": final_loss,
    }
