"""On CUDA: FLA's fused norms and SwiGLU (padfree.models.fused) against upstream's own module forwards.

Skipped without CUDA or flash-linear-attention. Each fused module is compared with its class's forward
(transformers' code) on the same inputs: in fp32 the formulas are the same, so outputs and gradients
agree to fp32 rounding; in bf16 the fused kernel may be at most 1.5x as far from the fp32 reference as
upstream's own bf16 forward is (+1e-3). A whole patched model then trains one packed row in bf16 with
the fused modules and with upstream's, both against the fp32 patched model with upstream's.
"""

from __future__ import annotations

import pytest
import torch

import padfree
import padfree.models.fused as fused
from padfree.ops._backend import fla_available
from padfree.tiny import FAMILIES, load_tiny_model
from tests.helpers import assert_close, rms_relative_error

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fla_available()), reason="needs CUDA and FLA")
DEVICE = "cuda"
FP32_BOUND = 1e-5
FP32_WHY = "fp32, the same formula in another order of operations; a wrong weight (w for 1 + w) or eps is off by >1e-2"
ROWS = 777  # not a multiple of any block size


def _inputs(module, kind: str, dtype: torch.dtype, gen: torch.Generator) -> list[torch.Tensor]:
    if kind == "mlp":
        width = module.gate_proj.in_features
    else:
        width = module.weight.shape[0]
    shapes = [(1, ROWS, width)] if kind != "gated_norm" else [(ROWS, width), (ROWS, width)]
    return [(torch.randn(s, generator=gen) * 2).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _forward_and_grads(forward, module, inputs):
    out = forward(*inputs)
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(out, [*inputs, *params], torch.ones_like(out) * 0.1 + out.detach() * 0.5)
    return [out.float(), *(g.float() for g in grads)]


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_modules_match_upstream_forward(tmp_path, family):
    gen = torch.Generator().manual_seed(0)
    model = load_tiny_model(family, tmp_path).to(DEVICE)
    with torch.no_grad():  # the norms' weights start at 0 or 1; random ones test the (1 + w) and w paths
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    padfree.patch(model, elementwise_backend="fla")
    fused_modules = {kind: m for m in model.modules() if (kind := m.__dict__.get(fused._MARK))}
    assert set(fused_modules) >= {"norm", "gated_norm"}, set(fused_modules)
    for kind, module in fused_modules.items():
        upstream = type(module).forward.__get__(module)
        inputs = _inputs(module, kind, torch.float32, gen)
        reference = _forward_and_grads(upstream, module, inputs)
        got = _forward_and_grads(module.forward, module, inputs)
        for i, (ref, out) in enumerate(zip(reference, got)):
            assert_close(f"{family} {kind} output/grad {i}", ref, out, FP32_BOUND, FP32_WHY)
        # bf16: the fused kernel against fp32 upstream, no further off than upstream's own bf16 forward
        module.to(torch.bfloat16)
        low = [t.detach().bfloat16().requires_grad_() for t in inputs]
        upstream_bf16 = _forward_and_grads(upstream, module, low)
        fused_bf16 = _forward_and_grads(module.forward, module, low)
        for i, (ref, up, out) in enumerate(zip(reference, upstream_bf16, fused_bf16)):
            own = rms_relative_error(ref, up)
            assert_close(f"{family} {kind} bf16 output/grad {i}", ref, out, 1.5 * own + 1e-3,
                         f"1.5 x upstream's bf16 error ({own:.2e}) + 1e-3")  # fmt: skip
        module.to(torch.float32)


def _loss_and_grads(model, batch, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.float().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_training_step_with_fused_modules_is_as_close_to_fp32(tmp_path, family, precision):
    """bf16 weights (padfree bench), or fp32 weights under bf16 autocast (padfree train on CUDA), where
    the fused norms get fp32 residual-stream inputs and bf16 projections' outputs."""
    gen = torch.Generator().manual_seed(0)
    lengths = [70, 1, 17, 130, 3]
    batch = padfree.collate([{"input_ids": torch.randint(0, 256, (n,), generator=gen)} for n in lengths])
    batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    assert len(batch["cu_seq_lens_q"]) - 1 == len(lengths)
    reference_model = load_tiny_model(family, tmp_path).to(DEVICE).train()
    reference = _loss_and_grads(padfree.patch(reference_model, elementwise_backend="torch"), batch)
    mixed = precision == "bf16-mixed"
    model = load_tiny_model(family, tmp_path).to(DEVICE, torch.float32 if mixed else torch.bfloat16).train()
    eager = _loss_and_grads(padfree.patch(model, elementwise_backend="torch"), batch, autocast=mixed)
    fused_run = _loss_and_grads(padfree.patch(model, elementwise_backend="fla"), batch, autocast=mixed)
    for i, name in enumerate(("loss", "gradients")):
        eager_error = rms_relative_error(reference[i], eager[i])
        assert_close(name, reference[i], fused_run[i], 1.5 * eager_error + 1e-3,
                     f"1.5 x the eager bf16 run's own error vs fp32 ({eager_error:.2e}) + 1e-3")  # fmt: skip
