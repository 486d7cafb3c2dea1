"""`padfree.patch(elementwise_backend=...)`: FLA's fused norms and SwiGLU (padfree.models.fused).

FLA's kernels need CUDA, so their numerics are checked on a GPU (tests/gpu/test_cuda_fused.py). Here, on
CPU: bad settings are refused before anything is patched, the FLA forwards land on exactly the modules
whose formulas FLA computes, CPU inputs fall back to upstream's own forward (or are refused under
"fla"), `unpatch` removes them, `patch(loss_backend=)` reaches the fused loss, and `padfree bench` gates
and times the eager-norms and torch-loss baseline paths.
"""

from __future__ import annotations

import pytest
import torch

import padfree
import padfree.loss_chunked as loss_chunked
import padfree.models.fused as fused
from padfree.tiny import load_tiny_model
from tests.helpers import tiny_bench_report


def _marked(model) -> dict[str, str]:
    return {name: m.__dict__[fused._MARK] for name, m in model.named_modules() if fused._MARK in m.__dict__}


def _row():
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 1, 17, 9]
    batch = padfree.collate([{"input_ids": torch.randint(0, 256, (n,), generator=generator)} for n in lengths])
    assert len(batch["cu_seq_lens_q"]) - 1 == len(lengths)
    return batch


@pytest.mark.parametrize(
    "settings, fla_installed, message",
    [
        (dict(elementwise_backend="triton"), True, "not one of"),
        (dict(elementwise_backend="fla", compile_elementwise=True), True, "pick one"),
        (dict(elementwise_backend="fla"), False, "pip install 'padfree\\[fla\\]'"),
        (dict(loss_backend="triton"), True, "loss_backend='triton' is not one of"),
        (dict(loss_backend="fla", compile_elementwise=True), True, "pass one of them"),
        (dict(loss_backend="fla"), False, "loss_backend='fla' needs flash-linear-attention"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_patched(tmp_path, monkeypatch, settings, fla_installed, message):
    monkeypatch.setattr(fused, "fla_available", lambda: fla_installed)
    monkeypatch.setattr(loss_chunked, "fla_available", lambda: fla_installed)
    model = load_tiny_model("qwen3_5", tmp_path)
    with pytest.raises(ValueError, match=message):
        padfree.patch(model, **settings)
    assert not padfree.is_patched(model) and not _marked(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_fla_forwards_go_on_every_text_norm_and_silu_mlp(tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "fla_available", lambda: True)
    model = load_tiny_model("qwen3_5", tmp_path)
    config = model.config.get_text_config()
    padfree.patch(model)
    kinds = list(_marked(model).values())
    gdn_layers = config.layer_types.count("linear_attention")
    attention_layers = config.layer_types.count("full_attention")
    assert gdn_layers and attention_layers
    assert kinds.count("gated_norm") == gdn_layers
    # two per decoder layer, q_norm and k_norm per attention layer, the final norm
    assert kinds.count("norm") == 2 * config.num_hidden_layers + 2 * attention_layers + 1
    assert kinds.count("mlp") == config.num_hidden_layers
    padfree.unpatch(model)
    assert not _marked(model) and not any("forward" in m.__dict__ for m in model.modules())


def test_a_non_silu_mlp_keeps_upstream_forward(tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "fla_available", lambda: True)
    model = load_tiny_model("qwen3_5", tmp_path)
    mlp = model.model.layers[0].mlp
    mlp.act_fn = torch.nn.GELU()  # FLA's swiglu would compute silu: it must not replace this one
    padfree.patch(model)
    assert "forward" not in mlp.__dict__
    assert fused._MARK in model.model.layers[1].mlp.__dict__


def test_cpu_inputs_run_upstream_forwards_under_auto_and_are_refused_under_fla(tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "fla_available", lambda: True)
    model = load_tiny_model("qwen3_5", tmp_path).train()
    batch = _row()
    padfree.patch(model, elementwise_backend="torch")
    assert not _marked(model)
    reference = model(**batch).loss
    padfree.patch(model)  # auto: FLA forwards set, but these inputs are on the CPU
    assert _marked(model)
    assert torch.equal(model(**batch).loss, reference)
    padfree.patch(model, elementwise_backend="fla")
    with pytest.raises(ValueError, match="needs CUDA tensors.*elementwise_backend='auto'"):
        model(**batch)


def test_loss_backend_fla_refuses_cpu_inputs_and_torch_matches_auto(tmp_path, monkeypatch):
    """patch(loss_backend=) reaches the fused loss: "fla" refuses a CPU training step with the fix, and on
    CPU "auto" (which cannot take FLA's CUDA kernels) gives "torch"'s loss bit for bit."""
    monkeypatch.setattr(loss_chunked, "fla_available", lambda: True)
    model = load_tiny_model("qwen3_5", tmp_path).train()
    batch = _row()
    reference = padfree.patch(model, loss_backend="torch")(**batch).loss
    assert torch.equal(padfree.patch(model)(**batch).loss, reference)
    padfree.patch(model, loss_backend="fla")
    with pytest.raises(ValueError, match="loss_backend.*needs CUDA tensors, got device cpu"):
        model(**batch)


def test_bench_gates_and_times_the_eager_norms_and_torch_loss_paths(tmp_path, capsys):
    _, results = tiny_bench_report(tmp_path, "padfree,padfree_eager_norms,padfree_torch_loss")
    out = capsys.readouterr().out
    for path in ("padfree_eager_norms", "padfree_torch_loss"):
        assert results[path]["real_tokens"] == results["padfree"]["real_tokens"] > 0
        assert f"{path}: max RMS-relative logits error" in out
