"""Varlen Gated DeltaNet ops with FLA-compatible signatures, on CPU and GPU.

Each op lives in its own folder with a plain fp32 oracle (`naive.py`), a vectorised PyTorch backend
(`torch_backend.py`) and a pass-through to flash-linear-attention (`fla_backend.py`).
"""

from padfree.ops.conv1d import causal_conv1d
from padfree.ops.gated_delta import chunk_gated_delta_rule

__all__ = ["causal_conv1d", "chunk_gated_delta_rule"]
