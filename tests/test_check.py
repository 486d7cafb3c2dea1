"""`padfree check`: passes on a tiny model, and fails (exit 1) when a layer lets documents mix."""

from __future__ import annotations

import re

import pytest
import torch

import padfree.models.layers
from padfree.check import run_check
from padfree.cli import main


def reported_error(text: str) -> float:
    match = re.search(r"max RMS-relative logits error ([0-9.e+-]+)", text)
    assert match, text
    return float(match.group(1))


def test_check_passes_on_a_tiny_model(capsys):
    assert main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "backends picked by auto: Gated DeltaNet torch (its conv torch), attention sdpa_per_doc, norms and MLPs torch, loss softmax torch" in out
    assert "sequence parallelism: Ulysses at degrees [1, 2, 4], context parallelism at any degree" in out
    if not torch.cuda.is_available():
        assert "symmetric-memory collectives: not available here: it needs 2 or more CUDA GPUs" in out
    assert "CUDA-graph step (padfree.CudaGraphTrainStep, padfree train --cuda-graph): not available here: CUDA graphs " \
           "need a CUDA device" in out
    assert reported_error(out) <= 1e-4 and "bound 1.0e-04" in out and out.rstrip().endswith("keep documents apart here.")


def test_check_in_bf16_bounds_by_the_models_own_rounding(capsys):
    # bf16: the bound is 3x the unpatched model's own rounding error (bf16 vs an fp32 copy) where that exceeds 2e-2;
    # the tiny std-0.2 model's is ~5e-2 on CPU (~4e-2 on an H100, where the fixed 2e-2 failed a correct setup).
    assert main(["check", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    bound = float(re.search(r"; bound ([0-9.e+-]+) \(3 x the unpatched model's own rounding error here\)", out).group(1))
    assert 2e-2 < bound < 0.4 and reported_error(out) <= bound, out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", ["chunk_gated_delta_rule", "causal_conv1d"])
def test_check_fails_when_a_layer_ignores_document_boundaries(op, dtype, monkeypatch, capsys):
    real = getattr(padfree.models.layers, op)

    def leaky(*args, cu_seqlens=None, cu_seqlens_cpu=None, **kwargs):  # the packed row as one sequence
        return real(*args, **kwargs)

    monkeypatch.setattr(padfree.models.layers, op, leaky)
    assert run_check(device="cpu", dtype=dtype) == 1
    out = capsys.readouterr().out
    assert reported_error(out) > 1e-2 and "FAIL" in out, out


def test_check_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["check", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_check_says_the_cuda_graph_step_skips_moe_models(tmp_path, capsys):
    from padfree.tiny import save_tiny_model

    save_tiny_model("qwen3_5_moe", tmp_path)
    assert main(["check", "--model", str(tmp_path), "--device", "cpu"]) == 0
    assert "--cuda-graph): not available here: the captured step covers dense models" in capsys.readouterr().out
