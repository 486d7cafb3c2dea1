"""`padfree check`: what is installed, which backends `auto` picks, and proof on a real model that a
packed row gives the same logits as running each document alone.

The proof: a few documents with random token ids (one crossing the 64-token chunk edge, then a
1-token document and one shorter than the Gated DeltaNet conv width, placed after it so that any
state leaking across a boundary reaches them) are run one at a time through the *unpatched* model
(upstream transformers, no packing), then packed into one row through the patched model.
Without --model, the tiny model's weights are drawn with std 0.2 instead of transformers' 0.02:
at 0.02 the token mixers barely move the logits, and a recurrence that ignores document
boundaries changed them by only ~1e-4; at 0.2 that leak shows as ~1e-1.
The largest per-document RMS-relative error of the logits is compared with a bound:
  fp32       1e-4: the two sides differ only in summation order (typically ~1e-6), while a layer that
             lets documents leak into each other gives errors of order 1e-1.
  bf16/fp16  2e-2, or 3x the unpatched model's own rounding error where that is larger (the per-document
             runs in bf16 against an fp32 copy of the same weights): every matmul and the recurrence
             round to 8 (bf16) mantissa bits, and the two sides use different kernels. At std 0.2 the
             tiny model's own rounding error is ~4e-2 on an H100 and ~5e-2 on CPU, its packed row's
             error 6.4e-2 and 5.1e-2 (measured 2026-11-27: the fixed 2e-2 failed a correct setup on the
             H100), while a recurrence that ignores boundaries gives ~5e-1 (CPU: padfree.bench.gate).
"""

from __future__ import annotations

import copy
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import TextIO

import torch
from transformers.utils import logging as hf_logging

import padfree
from padfree.ops import attention
from padfree.ops._backend import fla_available, fla_unsafe_reason, flash_qla_dispatched, resolve_backend
from padfree.ops.conv1d import conv_backend
from padfree.tiny import causal_lm_class, tiny_config

BOUNDS = {torch.float32: (1e-4, "fp32: only summation order differs"),
          torch.bfloat16: (2e-2, "bf16: 8-bit mantissa, different kernels round differently"),
          torch.float16: (2e-2, "fp16: different kernels round differently")}  # fmt: skip
# Reduced precision: the bound is at least this many times the unpatched model's own rounding error, which covers
# the reference's rounding plus padfree's (the GPU tests allow padfree 1.5x upstream's).
ROUNDING_MARGIN = 3.0
_OPTIONAL = ("triton", "flash-linear-attention", "tilelang", "flash-qla", "flash-attn", "peft", "datasets")


def package_version(package: str) -> str:
    """The installed distribution's version, or "-"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def rms_relative_error(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """||actual - reference||_rms / ||reference||_rms in fp64 (the difference alone when the reference is 0)."""
    reference, actual = reference.double(), actual.double()
    diff = (actual - reference).pow(2).mean().sqrt().item()
    scale = reference.pow(2).mean().sqrt().item()
    return diff / scale if scale else diff


def _load_model(path: str | None, dtype: torch.dtype):
    if path is None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)
        model = causal_lm_class("qwen3_5")(tiny_config("qwen3_5", initializer_range=0.2))
        torch.random.set_rng_state(generator_state)
        return model.to(dtype), "tiny Qwen3.5, random weights"
    if not (Path(path) / "config.json").is_file():
        raise ValueError(
            f"--model {path} is not a model checkpoint folder (no config.json); pass a save_pretrained folder."
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), path


def _backends(model, device: torch.device, dtype: torch.dtype) -> str:
    gdn = resolve_backend("auto", device)
    why = ""
    if device.type == "cuda" and gdn == "torch":
        reason = fla_unsafe_reason(device.index or 0) if fla_available() else "flash-linear-attention not importable"
        why = f" ({reason})"
    if gdn == "fla" and flash_qla_dispatched():
        why = (" (FlashQLA's kernels via FLA's dispatch; CUDA-graph steps without its context parallelism; "
               "FLA_FLASH_QLA=0: FLA's own)")
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    probe = torch.empty(1, 1, head_dim, dtype=dtype, device=device)
    # padfree.models.fused and padfree.loss_chunked: FLA's norm, SwiGLU and cross-entropy kernels run on
    # CUDA inputs whenever FLA imports
    elementwise = "fla" if device.type == "cuda" and fla_available() else "torch"
    return (
        f"Gated DeltaNet {gdn}{why} (its conv {conv_backend('auto', device)}), "
        f"attention {attention.resolve_attention_backend('auto', probe)}, "
        f"norms and MLPs {elementwise}, loss softmax {elementwise}"
    )


def _sequence_parallel(model) -> str:
    """What padfree.parallel can do for this model here (the degrees are the model's, not this machine's)."""
    import torch.distributed as dist

    from padfree.parallel import ulysses_degrees

    if not dist.is_available():
        return "unavailable (this PyTorch has no torch.distributed)"
    from padfree.parallel.fused import symmetric_memory_on_this_machine

    backends = [name for name, ok in (("nccl", dist.is_nccl_available()), ("gloo", dist.is_gloo_available())) if ok]
    return (
        f"Ulysses at degrees {ulysses_degrees(model.config)}, context parallelism at any degree "
        f"(mode='auto' picks per layer kind); process-group backends: {', '.join(backends) or 'none'}; "
        f"symmetric-memory collectives: {symmetric_memory_on_this_machine()}"
    )


def _cuda_graph_refusal(model, device: torch.device) -> str | None:
    """Why padfree.CudaGraphTrainStep cannot run this model here, or None when it can."""
    from padfree.cuda_graph import check_graphable

    padfree.patch(model)
    try:
        check_graphable(model, None, device)
    except ValueError as error:
        return str(error)
    finally:
        padfree.unpatch(model)
    return None


def packed_vs_per_document(
    model, lengths: list[int], device: torch.device, static_max_docs: int | None = None, **patch_settings
) -> list[float]:
    """Per document of `lengths` (random tokens): RMS-relative logits error of the patched model's packed
    row (padfree.patch with `patch_settings`) against the unpatched model on the document alone. Used by
    `padfree check` and `padfree bench`. With `static_max_docs` (CUDA) the packed row runs as the CUDA-graph
    step runs it: a padfree.static_row.StaticRow of that many document slots, empty documents at its end and
    offsets the ops trust."""
    docs = documents(model.config.get_text_config().vocab_size, lengths)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # upstream's "falling back to the slow PyTorch kernel" notes are noise here
    try:
        with torch.no_grad():
            reference = [model(input_ids=d[None].to(device)).logits[0].float() for d in docs]
    finally:
        hf_logging.set_verbosity(verbosity)
    with torch.no_grad():
        padfree.patch(model, **patch_settings)
        try:
            batch = padfree.collate([{"input_ids": d} for d in docs])
            if static_max_docs is not None:
                from padfree import static_row

                row = static_row.StaticRow(sum(lengths), static_max_docs, device)
                row.fill(batch)
                with static_row.fla_tensor_cache_off():
                    packed = static_row.static_row_logits(model, row)[0].float()
            else:
                batch.pop("labels")
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                packed = model(**batch).logits[0].float()
        finally:
            padfree.unpatch(model)
    pieces = packed.split(lengths)
    return [rms_relative_error(r, p) if torch.isfinite(p).all() else float("inf") for r, p in zip(reference, pieces)]


def documents(vocab: int, lengths: list[int]) -> list[torch.Tensor]:
    """Random token ids of the given lengths (seed 0): the documents of every packed-vs-per-document check."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (n,), generator=generator) for n in lengths]


@torch.no_grad()
def rounding_error(model, lengths: list[int], device: torch.device) -> float:
    """Max per-document RMS-relative logits error of the unpatched `model` (bf16/fp16) against an fp32 copy of
    it, on the same documents as packed_vs_per_document. The copy doubles the model's memory for the call."""
    docs = documents(model.config.get_text_config().vocab_size, lengths)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        low = [model(input_ids=d[None].to(device)).logits[0].float() for d in docs]
        exact = copy.deepcopy(model).float()
        high = [exact(input_ids=d[None].to(device)).logits[0] for d in docs]
    finally:
        hf_logging.set_verbosity(verbosity)
    del exact
    return max(rms_relative_error(h, lo) for h, lo in zip(high, low))


def error_bound(model, lengths: list[int], device: torch.device, dtype: torch.dtype) -> tuple[float, str, float]:
    """(bound, why, rounding error): the dtype's bound (BOUNDS), raised to ROUNDING_MARGIN x the unpatched model's
    own rounding error where that is larger (reduced precision only; fp32's rounding error is reported as 0)."""
    bound, why = BOUNDS[dtype]
    rounding = 0.0 if dtype == torch.float32 else rounding_error(model, lengths, device)
    if ROUNDING_MARGIN * rounding > bound:
        bound, why = ROUNDING_MARGIN * rounding, f"{ROUNDING_MARGIN:g} x the unpatched model's own rounding error here"
    return bound, why, rounding


def run_check(model: str | None = None, device: str = "auto", dtype: str = "auto", out: TextIO | None = None) -> int:
    """Print the report; 0 when the packed row matches, 1 when it does not, 2 for a bad --model/--device."""
    out = out if out is not None else sys.stdout
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("padfree check: error: --device cuda, but PyTorch sees no CUDA GPU.", file=sys.stderr)
        return 2
    target = torch.device(device)
    torch_dtype = {"auto": torch.bfloat16 if target.type == "cuda" else torch.float32,
                   "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]  # fmt: skip
    print("padfree check", file=out)
    print(
        f"  versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{package_version('transformers')}, padfree {padfree.__version__}; "
        + ", ".join(f"{name} {package_version(name)}" for name in _OPTIONAL),
        file=out,
    )
    try:
        loaded, name = _load_model(model, torch_dtype)
        padfree.patch(loaded)  # fail early on an unsupported class, before the reference runs
        padfree.unpatch(loaded)
    except (TypeError, ValueError, OSError) as error:
        print(f"padfree check: error: {error}", file=sys.stderr)
        return 2
    loaded = loaded.to(target).eval()
    conv = getattr(loaded.config.get_text_config(), "linear_conv_kernel_dim", 4)
    lengths = [70, 1, 17, conv - 1]
    print(f"  device: {target} ({str(torch_dtype).removeprefix('torch.')})", file=out)
    print(f"  backends picked by auto: {_backends(loaded, target, torch_dtype)}", file=out)
    params = sum(p.numel() for p in loaded.parameters())
    print(f"  model: {name} ({type(loaded).__name__}, {params / 1e6:.1f}M params)", file=out)
    print(f"  sequence parallelism: {_sequence_parallel(loaded)}", file=out)
    errors = packed_vs_per_document(loaded, lengths, target)
    worst = max(range(len(errors)), key=lambda i: errors[i])
    bound, why, _ = error_bound(loaded, lengths, target, torch_dtype)
    print(
        f"  packed row of documents {lengths} (conv width {conv}) vs each document alone, unpatched:\n"
        f"    max RMS-relative logits error {errors[worst]:.1e} (the {lengths[worst]}-token document); "
        f"bound {bound:.1e} ({why})",
        file=out,
    )
    refusal = _cuda_graph_refusal(loaded, target)
    graph_line = "  CUDA-graph step (padfree.CudaGraphTrainStep, padfree train --cuda-graph): "
    if refusal is not None:
        print(graph_line + f"not available here: {refusal}", file=out)
    else:  # the same comparison with the row in the graph step's fixed shape (empty documents at its end)
        static = packed_vs_per_document(loaded, lengths, target, static_max_docs=len(lengths) + 3)
        errors = errors + static
        print(graph_line + f"available; its fixed-shape row: max RMS-relative logits error {max(static):.1e}",
              file=out)  # fmt: skip
    if max(errors) <= bound:
        print("PASS: packed rows keep documents apart here.", file=out)
        return 0
    print(
        "FAIL: the packed row differs from the per-document runs: documents leak into each other (or a kernel is "
        "wrong) on this setup. Report it with this output; meanwhile try --device cpu, or padfree.patch(model, "
        "backend='torch').",
        file=out,
    )
    return 1
