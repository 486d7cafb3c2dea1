"""`patch(model)` / `unpatch(model)`: instance-level, idempotent, reversible.

Patching sets an instance attribute `forward` on the causal LM and on each Gated DeltaNet and
attention module; the class is never touched, so other instances (and the upstream reference runs
in padfree's tests) are unaffected. `unpatch` deletes those attributes, which restores the class
forward exactly. Ordinary (unpacked) batches go straight to the upstream forward.
"""

from __future__ import annotations

import functools

import torch
import transformers
from packaging.version import Version

from padfree.loss_chunked import check_softmax_backend
from padfree.models.causal_lm import PACKED_KWARG, packed_causal_lm_forward
from padfree.models import compiled, fused
from padfree.models.layers import attention_packed, gated_deltanet_packed
from padfree.parallel.layers import sharded_mixer
from padfree.parallel.mesh import SequenceParallel
from padfree.parallel.shard import ShardedRow

# The one transformers version gate: 5.9 is the first release whose Qwen3.5 Gated DeltaNet accepts
# cu_seq_lens_q and whose decoder layers forward extra keywords to their mixers; 6 may change both.
MIN_TRANSFORMERS, MAX_TRANSFORMERS = Version("5.9"), Version("6")

SUPPORTED_CLASSES = (
    "Qwen3_5ForCausalLM",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForCausalLM",
    "Qwen3_5MoeForConditionalGeneration",
    "Qwen3NextForCausalLM",
)
_MARK = "_padfree_settings"


def check_transformers_version() -> None:
    found = Version(transformers.__version__)
    if not (MIN_TRANSFORMERS <= found < MAX_TRANSFORMERS):
        raise RuntimeError(
            f"padfree supports transformers >={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}; found {found}. "
            f"pip install 'transformers>={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS}'."
        )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (patching it patches what peft calls)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _mixers(model: torch.nn.Module):
    """(kind, module) for every token mixer of the language model's decoder layers."""
    for layer in model.modules():
        if hasattr(layer, "linear_attn"):
            yield "gdn", layer.linear_attn
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "q_norm"):
            yield "attention", layer.self_attn


def _mixer_forward(kind: str, module: torch.nn.Module, backend: str, attention_backend: str):
    upstream = type(module).forward.__get__(module)

    @functools.wraps(upstream)
    def forward(*args, **kwargs):
        packed = kwargs.pop(PACKED_KWARG, None)
        if packed is None:
            return upstream(*args, **kwargs)
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if isinstance(packed, ShardedRow):  # sequence parallelism: this rank holds a slice of the row
            return sharded_mixer(kind, module, hidden, kwargs.get("position_embeddings"), packed,
                                 backend if kind == "gdn" else attention_backend)  # fmt: skip
        if kind == "gdn":
            return gated_deltanet_packed(module, hidden, packed, backend)
        return attention_packed(module, hidden, kwargs["position_embeddings"], packed, attention_backend)

    return forward


def patch(
    model: torch.nn.Module,
    *,
    backend: str = "auto",
    attention_backend: str = "auto",
    fused_loss: bool = True,
    sequence_parallel: SequenceParallel | None = None,
    compile_elementwise: bool = False,
    elementwise_backend: str = "auto",
    loss_backend: str = "auto",
) -> torch.nn.Module:
    """Make `model` train correctly on packed rows (see `padfree.collate`); returns the same object.

    backend:           kernels for the Gated DeltaNet conv and recurrence: "auto", "torch", "fla". On CUDA "auto"
                       runs FLA's recurrence and padfree's own Triton conv (padfree.ops.conv1d.triton_kernels:
                       +2.8% tokens/s and 3 GiB less memory than FLA's conv in the 0.8B graphed step on an
                       H100); "fla" runs FLA's kernels for both.
    attention_backend: varlen attention: "auto", "varlen_attn", "flash_attn", "sdpa_per_doc".
    fused_loss:        in training mode with labels, compute the loss chunk by chunk without the
                       [T, vocab] logits (the output's `logits` is then None).
    sequence_parallel: split each packed row over these ranks (padfree.parallel); batches must then
                       come from `padfree.parallel.shard_batch`. Its mode is checked against the
                       model's heads here, before any compute.
    compile_elementwise: `torch.compile` the RMSNorms, gated RMSNorms and MLPs (padfree.models.compiled)
                       and the fused loss's per-chunk softmax gradient (padfree.loss_chunked). Off by
                       default: the first step compiles, a new row length recompiles, and on an H200
                       it was slower than the fused default below (0.8B shape: -7% without activation
                       checkpointing, -30% with it; docs/benchmarks.md).
    elementwise_backend: the same norms and MLPs: "auto" runs FLA's fused Triton kernels on CUDA inputs
                       when flash-linear-attention is installed and compile_elementwise is off, upstream's
                       eager code otherwise; "fla" requires FLA (and CUDA inputs); "torch" always runs
                       upstream's code (padfree.models.fused). The fused kernels cut GPU time but
                       cost more host time per call: +22% tokens/s (0.8B) and +19% (~4B) on a 4x H200
                       machine, yet up to -19% at 0.8B on slower one-GPU hosts (docs/benchmarks.md).
    loss_backend:      the fused loss's per-chunk softmax: "auto" runs FLA's cross-entropy kernels on
                       CUDA inputs when FLA is installed and compile_elementwise is off, PyTorch's ops
                       otherwise; "fla" requires FLA (and CUDA inputs); "torch" always runs PyTorch's
                       (padfree.loss_chunked, softmax_backend). FLA's: the loss 2.16x faster (H100).
    Calling it again updates the settings; `unpatch` undoes it.
    """
    check_transformers_version()
    fused.check_elementwise_backend(elementwise_backend, compile_elementwise)
    check_softmax_backend(loss_backend, compile_elementwise, "loss_backend")
    inner = _unwrap(model)
    name = type(inner).__name__
    if name not in SUPPORTED_CLASSES:
        raise TypeError(
            f"padfree.patch supports {', '.join(SUPPORTED_CLASSES)}; got {name}. Load the model with "
            "AutoModelForCausalLM from a Qwen3.5, Qwen3.5-MoE or Qwen3-Next checkpoint."
        )
    if sequence_parallel is not None:
        sequence_parallel = sequence_parallel.resolved_for(inner.config)
        if getattr(inner.config.get_text_config(), "output_router_logits", False):
            raise ValueError(
                "sequence parallelism does not compute the MoE router's auxiliary loss; set "
                "model.config.output_router_logits = False (fine-tuning usually keeps the router frozen)."
            )
    unpatch(inner)
    mixers = list(_mixers(inner))
    if not any(kind == "gdn" for kind, _ in mixers):
        raise TypeError(f"{name} has no Gated DeltaNet layers padfree recognises; is it a text model?")
    for kind, module in mixers:
        module.forward = _mixer_forward(kind, module, backend, attention_backend)
    upstream = type(inner).forward.__get__(inner)
    loss_kernels = dict(compile_backend=compiled.COMPILE_BACKEND if compile_elementwise else None,
                        softmax_backend=loss_backend)  # fmt: skip
    inner.forward = functools.wraps(upstream)(
        functools.partial(packed_causal_lm_forward, inner, upstream, fused_loss, loss_kernels, sequence_parallel)
    )
    if compile_elementwise:
        compiled.compile_elementwise(inner)
    elif elementwise_backend == "fla" or (elementwise_backend == "auto" and fused.fla_available()):
        fused.use_fla_elementwise(inner, required=elementwise_backend == "fla")
    settings = dict(backend=backend, attention_backend=attention_backend, fused_loss=fused_loss,
                    compile_elementwise=compile_elementwise, elementwise_backend=elementwise_backend,
                    loss_backend=loss_backend)  # fmt: skip
    setattr(inner, _MARK, dict(settings, sequence_parallel=sequence_parallel))
    return model


def unpatch(model: torch.nn.Module) -> torch.nn.Module:
    """Restore upstream behaviour exactly (a no-op on an unpatched model); returns the same object."""
    inner = _unwrap(model)
    for _, module in _mixers(inner):
        module.__dict__.pop("forward", None)
    inner.__dict__.pop("forward", None)
    inner.__dict__.pop(_MARK, None)
    compiled.uncompile_elementwise(inner)
    fused.remove_fla_elementwise(inner)
    return model


def is_patched(model: torch.nn.Module) -> bool:
    return hasattr(_unwrap(model), _MARK)
