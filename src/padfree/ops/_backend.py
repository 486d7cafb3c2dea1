"""Choosing a kernel backend for the varlen ops: `torch`, `fla`, or `auto`.

`auto` picks flash-linear-attention (FLA) on CUDA when it is importable and safe, else the
vectorised PyTorch backend. "Safe" matters: FLA 0.6 refuses (raises deep inside a kernel) to run
the gated backward on Hopper GPUs with Triton >= 3.4 and < 3.7.1, because those Triton releases
miscompile it. FLA then needs the `tilelang` package for that kernel. Without tilelang, `auto`
falls back to torch and says once what to install; it never mixes documents on any backend.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

BACKENDS = ("auto", "torch", "fla", "naive")

# Triton releases that miscompile FLA's gated chunk backward on Hopper (FLA issue #640).
_BAD_TRITON_MIN = (3, 4, 0)
_BAD_TRITON_FIXED = (3, 7, 1)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def flash_qla_dispatched() -> bool:
    """Whether FLA hands the gated delta rule to FlashQLA's kernels, for the calls FlashQLA takes (head dims 128,
    16-bit inputs, no in-kernel gates), as FLA's own FlashQLA backend decides it: in FLA 0.6, when the
    `flash_qla` package is installed, unless FLA_FLASH_QLA=0 (read per call). False without FLA, or with an FLA
    release that has no such backend. Fixed-shape rows (CUDA-graph steps) get it without its context
    parallelism (padfree.ops.gated_delta.fla_backend)."""
    if not fla_available():
        return False
    try:
        from fla.ops.gated_delta_rule.backends.flash_qla import FlashQLABackend
    except ImportError:
        return False
    return FlashQLABackend.is_available() and FlashQLABackend().is_enabled()


@functools.cache
def fla_available() -> bool:
    """True when flash-linear-attention is importable (it imports Triton, so it is checked once)."""
    if importlib.util.find_spec("fla") is None:
        return False
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception:  # a broken install is treated as absent; `padfree check` reports it
        return False
    return True


@functools.cache
def fla_unsafe_reason(device_index: int) -> str | None:
    """Why FLA must not run on this CUDA device, or None when it may.

    Hopper (sm_90) + Triton in [3.4, 3.7.1) miscompiles the gated backward; FLA then needs tilelang.
    """
    major, _ = torch.cuda.get_device_capability(device_index)
    if major != 9:
        return None
    try:
        import triton
    except ImportError:
        return "Triton is not installed"
    triton_version = _version_tuple(triton.__version__)
    if not (_BAD_TRITON_MIN <= triton_version < _BAD_TRITON_FIXED):
        return None
    if importlib.util.find_spec("tilelang") is not None:
        return None  # FLA routes the miscompiled kernel through tilelang
    return (
        f"Triton {triton.__version__} miscompiles FLA's gated backward on Hopper GPUs; "
        "install `tilelang` (FLA then uses it for that kernel) or Triton >= 3.7.1"
    )


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_backend(backend: str, device: torch.device, op: str = "gated_delta") -> str:
    """Turn `backend` ("auto", "torch", "fla", "naive") into the concrete backend for `device`.

    The Hopper/Triton refusal concerns FLA's gated delta backward only; `op="conv1d"` skips it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; pass one of those.")
    if backend == "fla":
        if device.type != "cuda":
            raise ValueError(f"backend='fla' needs CUDA tensors, got device {device}; use backend='torch' on CPU.")
        if not fla_available():
            raise ValueError("backend='fla' needs flash-linear-attention: pip install 'padfree[fla]'.")
        reason = fla_unsafe_reason(device.index or 0) if op == "gated_delta" else None
        if reason is not None:
            raise ValueError(f"backend='fla' is unsafe here: {reason}.")
        return "fla"
    if backend != "auto":
        return backend
    if device.type != "cuda" or not fla_available():
        return "torch"
    reason = fla_unsafe_reason(device.index or 0) if op == "gated_delta" else None
    if reason is not None:
        _warn_once(f"padfree: using the slower torch backend for Gated DeltaNet because {reason}.")
        return "torch"
    return "fla"
