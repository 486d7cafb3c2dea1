"""Padding-free patches for Qwen3.5, Qwen3.5-MoE and Qwen3-Next causal LMs."""

from padfree.models.patch import SUPPORTED_CLASSES, check_transformers_version, is_patched, patch, unpatch

__all__ = ["SUPPORTED_CLASSES", "check_transformers_version", "is_patched", "patch", "unpatch"]
