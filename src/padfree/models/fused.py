"""FLA's fused Triton kernels for the elementwise modules around the mixers (`patch(elementwise_backend=)`).

Why: in eager PyTorch a Qwen3.5 RMSNorm is a chain of small kernels (cast to fp32, square, mean,
rsqrt, two multiplies, cast back; about twice as many in the backward), each reading and writing the
whole [T, C] activation. A model runs two per decoder layer, plus the gated RMSNorm of each Gated
DeltaNet layer, the per-head q/k norms of each attention layer and the SwiGLU product of each MLP.
The GPU profiles (docs/benchmarks.md) put elementwise multiplies and dtype casts at about a quarter
of a step's kernel time, and at 8,192-token rows with activation checkpointing the step is partly
bound by kernel launches (74% GPU busy). flash-linear-attention ships fused forward and backward
Triton kernels for exactly these formulas (its RMSNorm, gated RMSNorm and SwiGLU), so padfree calls
them instead of writing its own. `torch.compile` of the same modules (padfree.models.compiled) is
the other, opt-in way; the two exclude each other.

The formulas are upstream's, fp32 inside, output in the input's dtype:
- RMSNorm:      x * rsqrt(mean(x^2) + eps) * (1 + w)   -> FLA's rms_norm with the weight 1 + w
- RMSNormGated: x * rsqrt(mean(x^2) + eps) * w * silu(z) -> FLA's rms_norm_gated, activation "silu".
                Upstream rounds the normalised x to the input dtype before the weight; FLA keeps it
                in fp32 (one rounding fewer; the same in fp32).
- MLP:          down(silu(gate(x)) * up(x))             -> down(FLA's swiglu(gate(x), up(x))); the
                projections are called as modules, so peft's wrappers on them keep working.

Each forward dispatches per call: CUDA tensors go to FLA, anything else (CPU) to the class's own
forward, so a patched model may move between devices. Like every padfree patch the forwards are
set on instances, and `unpatch` removes them.
"""

from __future__ import annotations

import functools

import torch

from padfree.ops._backend import fla_available

ELEMENTWISE_BACKENDS = ("auto", "torch", "fla")
_MARK = "_padfree_fused"


def check_elementwise_backend(elementwise_backend: str, compile_elementwise: bool) -> None:
    """Refuse a bad `elementwise_backend` at patch time, before anything runs."""
    if elementwise_backend not in ELEMENTWISE_BACKENDS:
        raise ValueError(
            f"elementwise_backend={elementwise_backend!r} is not one of {ELEMENTWISE_BACKENDS}; pass one of those."
        )
    if elementwise_backend == "fla" and compile_elementwise:
        raise ValueError(
            "elementwise_backend='fla' and compile_elementwise=True both replace the norms and MLPs; "
            "pick one (elementwise_backend='auto' with compile_elementwise=True compiles them)."
        )
    if elementwise_backend == "fla" and not fla_available():
        raise ValueError("elementwise_backend='fla' needs flash-linear-attention: pip install 'padfree[fla]'.")


def _kind(module: torch.nn.Module) -> str | None:
    """"norm", "gated_norm", "mlp" for the text modules FLA's kernels compute exactly, else None."""
    name = type(module).__name__
    if "Vision" in name:
        return None
    if name.endswith("RMSNormGated"):
        return "gated_norm" if getattr(module, "activation", None) in ("silu", "swish") else None
    if name.endswith("RMSNorm"):
        return "norm"
    if name.endswith("MLP") and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
        from transformers.activations import SiLUActivation

        return "mlp" if isinstance(getattr(module, "act_fn", None), (SiLUActivation, torch.nn.SiLU)) else None
    return None


def _on_fla(x: torch.Tensor, required: bool) -> bool:
    if x.is_cuda:
        return True
    if required:
        raise ValueError(
            f"elementwise_backend='fla' needs CUDA tensors, got device {x.device}; patch with "
            "elementwise_backend='auto' to use upstream's norms off the GPU."
        )
    return False


def _norm_forward(module, upstream, required: bool, x: torch.Tensor) -> torch.Tensor:
    if not _on_fla(x, required):
        return upstream(x)
    from fla.modules.layernorm import rms_norm

    # upstream multiplies by (1 + w) in fp32; the kernel reads a fp32 weight as it is
    return rms_norm(x, 1.0 + module.weight.float(), None, eps=module.eps)


def _gated_norm_forward(module, upstream, required: bool, hidden_states: torch.Tensor, gate: torch.Tensor):
    if not _on_fla(hidden_states, required):
        return upstream(hidden_states, gate)
    from fla.modules.fused_norm_gate import rms_norm_gated

    return rms_norm_gated(hidden_states, gate, module.weight, None, activation="silu", eps=module.variance_epsilon)


def _mlp_forward(module, upstream, required: bool, x: torch.Tensor) -> torch.Tensor:
    if not _on_fla(x, required):
        return upstream(x)
    from fla.modules.activations import swiglu

    return module.down_proj(swiglu(module.gate_proj(x), module.up_proj(x)))


_FORWARDS = {"norm": _norm_forward, "gated_norm": _gated_norm_forward, "mlp": _mlp_forward}


def use_fla_elementwise(model: torch.nn.Module, required: bool) -> None:
    """Set the FLA-dispatching forward on every norm and MLP of `model` that FLA computes exactly.

    required: raise on non-CUDA inputs (elementwise_backend="fla") instead of running upstream's forward.
    """
    for module in model.modules():
        kind = _kind(module)
        if kind is None:
            continue
        upstream = type(module).forward.__get__(module)
        module.forward = functools.wraps(upstream)(functools.partial(_FORWARDS[kind], module, upstream, required))
        setattr(module, _MARK, kind)


def remove_fla_elementwise(model: torch.nn.Module) -> None:
    """Undo `use_fla_elementwise` (a no-op where nothing was set)."""
    for module in model.modules():
        if module.__dict__.pop(_MARK, None) is not None:
            module.__dict__.pop("forward", None)
