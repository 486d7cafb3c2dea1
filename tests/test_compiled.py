"""`padfree.patch(compile_elementwise=True)`: the compiled norms and MLPs give the loss and gradients of
the eager patched model, one graph serves every instance of a class, `unpatch` removes it, and
`padfree bench` gates and times it as its own path.

The graphs are built with the "aot_eager" backend (the same Dynamo capture and autograd graphs as
inductor, without code generation, which costs ~20 s of C++ compiling per graph on these 2-core
machines); inductor's own numerics were checked on CPU by hand (docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import padfree
import padfree.models.compiled as compiled
from padfree.cli import main
from padfree.tiny import FAMILIES, load_tiny_model
from tests.helpers import assert_close, tiny_bench_report

# fp32: compiling changes no formula; aot_eager runs the same aten ops, so only op fusion could
# reorder a sum, and it does not here.
BOUND = 1e-6
WHY = "fp32, the same upstream formulas traced by Dynamo; a wrong graph (missing weight, wrong eps) is off by >1e-3"


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_model_equals_eager_patched_model(tmp_path, family):
    model = load_tiny_model(family, tmp_path).train()
    lengths = [5, 1, 17, 9]
    generator = torch.Generator().manual_seed(0)
    batch = padfree.collate([{"input_ids": torch.randint(0, 256, (n,), generator=generator)} for n in lengths])
    assert len(batch["cu_seq_lens_q"]) - 1 == len(lengths)

    padfree.patch(model)
    eager_loss, eager_grads = _loss_and_grads(model, batch)
    padfree.patch(model, compile_elementwise=True)
    marked = [m for m in model.modules() if m.__dict__.get("_padfree_compiled")]
    kinds = {kind for m in marked for kind in compiled.COMPILED_SUFFIXES if type(m).__name__.endswith(kind)}
    assert {"RMSNorm", "RMSNormGated"} <= kinds, kinds  # every family has both norms; dense ones an MLP too
    counters.clear()
    compiled_loss, compiled_grads = _loss_and_grads(model, batch)
    assert counters["stats"]["calls_captured"] > 0, "nothing went through torch.compile"

    assert_close("loss", eager_loss, compiled_loss, BOUND, WHY)
    assert_close("gradients", eager_grads, compiled_grads, BOUND, WHY)


def test_one_graph_per_class_and_shape_not_per_instance(tmp_path):
    model = load_tiny_model("qwen3_5", tmp_path).train()
    padfree.patch(model, compile_elementwise=True)
    hidden_norms = [m for m in model.modules() if type(m).__name__ == "Qwen3_5RMSNorm" and m.weight.shape[0] == 64]
    assert len(hidden_norms) >= 4
    counters.clear()
    x = torch.randn(1, 7, 64)
    for norm in hidden_norms:
        assert_close("norm", type(norm).forward(norm, x), norm(x), BOUND, WHY)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


def test_unpatch_removes_the_compiled_forwards(tmp_path):
    model = load_tiny_model("qwen3_5", tmp_path)
    padfree.patch(model, compile_elementwise=True)
    assert any("forward" in m.__dict__ and m.__dict__.get("_padfree_compiled") for m in model.modules())
    padfree.patch(model)  # patching again with the default drops the compiled forwards
    assert not any(m.__dict__.get("_padfree_compiled") for m in model.modules())
    padfree.patch(model, compile_elementwise=True)
    padfree.unpatch(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_peft_wrapped_mlp_is_left_eager(tmp_path):
    peft = pytest.importorskip("peft")
    model = load_tiny_model("qwen3_5", tmp_path)
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["gate_proj", "up_proj"]))
    padfree.patch(model, compile_elementwise=True)
    mlps = [m for m in model.modules() if type(m).__name__ == "Qwen3_5MLP"]
    assert mlps and not any(m.__dict__.get("_padfree_compiled") for m in mlps)
    assert any(m.__dict__.get("_padfree_compiled") for m in model.modules())  # the norms still are


def test_bench_gates_and_times_the_compiled_path(tmp_path, capsys):
    _, results = tiny_bench_report(tmp_path, "padfree,padfree_compiled")
    assert results["padfree_compiled"]["real_tokens"] == results["padfree"]["real_tokens"] > 0
    assert "padfree_compiled: max RMS-relative logits error" in capsys.readouterr().out


def test_train_flag_compiles_and_gives_the_same_steps(tmp_path, monkeypatch):
    from padfree.train.metrics import read_metrics

    args = ["train", "--max-tokens", "256", "--max-steps", "2", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--output-dir", str(tmp_path / "eager")]) == 0
    compiled_models = []
    real_compile = compiled.compile_elementwise
    monkeypatch.setattr(compiled, "compile_elementwise",
                        lambda model: (compiled_models.append(model), real_compile(model)))  # fmt: skip
    counters.clear()
    assert main([*args, "--compile-elementwise", "--output-dir", str(tmp_path / "compiled")]) == 0
    assert len(compiled_models) == 1 and counters["stats"]["calls_captured"] > 0
    eager, compiled_run = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("eager", "compiled"))
    assert len(compiled_run) == 2
    assert [r["loss"] for r in compiled_run] == pytest.approx([r["loss"] for r in eager], abs=1e-6)
    assert [r["grad_norm"] for r in compiled_run] == pytest.approx([r["grad_norm"] for r in eager], rel=1e-5)
