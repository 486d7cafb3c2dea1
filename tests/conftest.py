"""Fixtures shared by the suite: NaN-filled `torch.empty`, tiny models of the three families."""

from __future__ import annotations

import pytest
import torch

from padfree.tiny import FAMILIES, load_tiny_model

torch.set_num_threads(2)  # the CI machine has 2 cores


@pytest.fixture
def nan_empty(monkeypatch):
    """Fill float `torch.empty`/`empty_like` allocations with NaN, so reads of unwritten memory fail."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def empty_like(*args, **kwargs):
        out = real_empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    yield


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family, tmp_path):
    """A tiny model of `family`, saved and reloaded through `from_pretrained`, fp32, eval mode."""
    return load_tiny_model(family, tmp_path / family)


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group (torch.distributed initialised for the test, torn down after it)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()
