"""`torch.compile` of the elementwise modules around the kernels (opt-in: `patch(compile_elementwise=True)`).

Why: between the matmuls and the varlen kernels, a Qwen3.5 layer runs its RMSNorms (in fp32, with
casts in and out), the gated RMSNorm of the Gated DeltaNet output and the SwiGLU product of the
MLP as chains of small eager ops, each reading and writing the whole [T, C] activation. The third
GPU session's profile (docs/benchmarks.md) put elementwise multiplies and copies at 49 of 186 ms of
kernel time per step. Inductor fuses each chain into a few kernels, forward and backward; nothing
here is written by hand, so the numbers are upstream's own formulas. On CUDA, FLA's fused Triton
kernels for the same modules (padfree.models.fused) are the default and measured faster (eighth GPU
session, docs/benchmarks.md); this stays for setups that prefer inductor, and replaces them when on.

What is compiled: the instance `forward` of every text module whose class is a family's RMSNorm,
RMSNormGated or MLP (an MLP only while its projections are plain `nn.Linear`, i.e. not wrapped by
peft). Dynamo traces module instances of one class into one shared graph (the weights are graph
inputs), so the 24 layers of a 0.8B model compile each class once per input shape (the hidden-size
norms and the per-head q/k norms are two), not once per layer; padfree's static row lengths keep
the row dimension fixed. Like every padfree patch it is set on instances and `unpatch` removes it.
"""

from __future__ import annotations

import torch

# Class-name endings of the modules compiled (Qwen3_5*, Qwen3_5Moe*, Qwen3Next* share them).
COMPILED_SUFFIXES = ("RMSNorm", "RMSNormGated", "MLP")
_MARK = "_padfree_compiled"
# torch.compile's backend; tests swap in "aot_eager" (same graphs, no C++/Triton code generation).
COMPILE_BACKEND = "inductor"


def _is_compiled_kind(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    if not name.endswith(COMPILED_SUFFIXES) or "Vision" in name:
        return False
    if name.endswith("MLP"):
        projections = [getattr(module, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
        return all(type(p) is torch.nn.Linear for p in projections)
    return True


def compile_elementwise(model: torch.nn.Module) -> None:
    """Compile the selected modules' forwards in place."""
    for module in model.modules():
        if _is_compiled_kind(module):
            module.forward = torch.compile(type(module).forward.__get__(module), backend=COMPILE_BACKEND)
            setattr(module, _MARK, True)


def uncompile_elementwise(model: torch.nn.Module) -> None:
    """Undo `compile_elementwise` (a no-op where nothing was compiled)."""
    for module in model.modules():
        if module.__dict__.pop(_MARK, False):
            module.__dict__.pop("forward", None)
