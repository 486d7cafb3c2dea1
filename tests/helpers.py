"""Shared test helpers: the one tolerance check every comparison in the suite uses."""

from __future__ import annotations

import torch


def rms_relative_error(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """||actual - reference||_rms / ||reference||_rms, in fp64 (0 when both are exactly zero)."""
    reference = reference.detach().double()
    actual = actual.detach().double()
    if reference.shape != actual.shape:
        raise AssertionError(f"shape mismatch: reference {tuple(reference.shape)} vs actual {tuple(actual.shape)}")
    diff = (actual - reference).pow(2).mean().sqrt().item()
    scale = reference.pow(2).mean().sqrt().item()
    if scale == 0.0:
        return diff
    return diff / scale


def assert_close(name: str, reference: torch.Tensor, actual: torch.Tensor, bound: float, why: str = "") -> None:
    """Assert the RMS-relative error of `actual` against `reference` is at most `bound`.

    `name` says which tensor is compared (e.g. "dq"), `why` where the bound comes from, so a
    failure explains itself.
    """
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: actual holds NaN/inf (uninitialised memory read?)")
    err = rms_relative_error(reference, actual)
    if not err <= bound:
        raise AssertionError(f"{name}: RMS-relative error {err:.3e} > bound {bound:.1e}. {why}".rstrip())
