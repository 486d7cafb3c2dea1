"""padfree.loss: chunked linear CE == full-logits CE, transformers' ForCausalLMLoss, grad accumulation, memory.

Shape letters: B rows, T tokens, H hidden, V vocabulary, C rows of one chunk.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers.loss.loss_utils import ForCausalLMLoss

from padfree.loss import (
    DEFAULT_BUDGET_BYTES,
    causal_lm_loss,
    chunk_rows_for_budget,
    chunked_linear_cross_entropy,
    count_trained_tokens,
    per_token_entropy,
    per_token_logprobs,
    per_token_logprobs_and_entropy,
)
from padfree.ops._backend import fla_available
from tests.helpers import assert_close

FP32 = 1e-5  # fp32 summation order differs between chunked and full-logits paths; nothing else does
WHY_FP32 = "fp32 vs fp32 full logits: only summation order differs, errors ~1e-7"


def _inputs(T=53, H=24, V=97, dtype=torch.float32, bias=True, seed=0):
    """hidden [T, H], weight [V, H], bias [V], targets [T] with every 4th target ignored."""
    gen = torch.Generator().manual_seed(seed)
    hidden_TH = torch.randn(T, H, generator=gen).to(dtype).requires_grad_()
    weight_VH = (torch.randn(V, H, generator=gen) * 0.3).to(dtype).requires_grad_()
    bias_V = (torch.randn(V, generator=gen) * 0.1).to(dtype).requires_grad_() if bias else None
    targets_T = torch.randint(0, V, (T,), generator=gen)
    targets_T[::4] = -100
    return hidden_TH, weight_VH, bias_V, targets_T


def _grads(loss, tensors, retain_graph=False):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None], retain_graph=retain_graph)


def _reference_ce(hidden_TH, weight_VH, bias_V, targets_T):
    """Summed CE on full fp32 logits, and its gradients."""
    leaves = [None if t is None else t.detach().float().requires_grad_() for t in (hidden_TH, weight_VH, bias_V)]
    loss = F.cross_entropy(F.linear(leaves[0], leaves[1], leaves[2]), targets_T, reduction="sum", ignore_index=-100)
    return loss, _grads(loss, leaves)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 53, 200])
def test_chunked_ce_matches_full_logits(chunk_size, nan_empty):
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    ignored = int((targets_T == -100).sum())
    assert ignored >= 5 and len(targets_T) - ignored >= 5, "the case must have ignored and trained tokens"
    ref_loss, ref_grads = _reference_ce(hidden_TH, weight_VH, bias_V, targets_T)
    loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=chunk_size)
    # A non-unit upstream gradient checks that backward scales the precomputed gradients.
    grads = _grads(loss * 0.37, (hidden_TH, weight_VH, bias_V))
    assert_close("loss", ref_loss, loss, FP32, WHY_FP32)
    for name, ref, got in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
        assert_close(name, ref * 0.37, got, FP32, WHY_FP32)


def test_bf16_matches_fp32_reference():
    hidden_TH, weight_VH, bias_V, targets_T = _inputs(T=96, H=64, V=500, dtype=torch.bfloat16)
    loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=40)
    grads = _grads(loss, (hidden_TH, weight_VH, bias_V))
    assert loss.dtype == torch.float32 and all(g.dtype == torch.bfloat16 for g in grads)
    ref_loss, ref_grads = _reference_ce(hidden_TH, weight_VH, bias_V, targets_T)  # fp32 on the same bf16 values
    why = (
        "bf16 keeps 8 significant bits: each logit and each gradient element is rounded once (<= 2^-9 = 2e-3 "
        "relative); seen ~2e-3 on grads, ~1e-5 on the summed loss where roundings average out"
    )
    assert_close("loss", ref_loss, loss, 1e-4, why)
    for name, ref, got in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
        assert_close(name, ref, got, 1e-2, why)


@pytest.mark.parametrize("dtype, bound, why", [
    (torch.float32, FP32, WHY_FP32),
    (torch.bfloat16, 1e-2, "bf16 logits and gradients, each rounded once (<= 2^-9 relative), as the eager path"),
])  # fmt: skip
def test_compiled_chunks_match_full_logits(dtype, bound, why):
    """compile_backend: each chunk's softmax gradient as one compiled function (aot_eager here: the same
    Dynamo graph as inductor, without C++ code generation); a 53-row input in chunks of 16 (and a tail of 5)."""
    from torch._dynamo.utils import counters

    hidden_TH, weight_VH, bias_V, targets_T = _inputs(dtype=dtype)
    ref_loss, ref_grads = _reference_ce(hidden_TH, weight_VH, bias_V, targets_T)
    torch._dynamo.reset()
    counters.clear()
    loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=16,
                                        compile_backend="aot_eager")  # fmt: skip
    grads = _grads(loss * 0.37, (hidden_TH, weight_VH, bias_V))
    assert counters["stats"]["calls_captured"] > 0, "the chunks did not go through torch.compile"
    torch._dynamo.reset()
    assert loss.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    assert_close("loss", ref_loss, loss, bound if dtype == torch.float32 else 1e-4, why)
    for name, ref, got in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
        assert_close(name, ref * 0.37, got, bound, why)


def test_all_targets_ignored_gives_exact_zeros(nan_empty):
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    targets_T = torch.full_like(targets_T, -100)
    loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=16)
    grads = _grads(loss, (hidden_TH, weight_VH, bias_V))
    assert loss.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads), "grads must be exactly 0, not NaN or tiny"


def test_empty_input_gives_zero():
    hidden_TH, weight_VH, _, _ = _inputs()
    empty_TH = hidden_TH[:0].detach().requires_grad_()
    loss = chunked_linear_cross_entropy(empty_TH, weight_VH, torch.zeros(0, dtype=torch.long))
    d_hidden, d_weight = _grads(loss, (empty_TH, weight_VH))
    assert loss.item() == 0.0 and d_hidden.shape == (0, 24) and not d_weight.any()


class _OpSpy(TorchDispatchMode):
    """Records, over every aten op run inside it: the largest new tensor, the most rows of any new
    [rows, V] tensor (logits-shaped), and the number of matmuls."""

    def __init__(self, vocab=-1):
        super().__init__()
        self.vocab, self.largest, self.logit_rows, self.matmuls = vocab, 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view (weight.t()) allocates nothing
            return out
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.dim() == 2 and t.shape[1] == self.vocab:
                    self.logit_rows = max(self.logit_rows, t.shape[0])
        self.matmuls += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)
        return out


def test_frozen_weight_skips_weight_gradient():
    hidden_TH, weight_VH, _, targets_T = _inputs(bias=False)
    frozen_VH = weight_VH.detach()  # LoRA: lm_head does not train
    _, (ref_dhidden, ref_dweight) = _reference_ce(hidden_TH, weight_VH, None, targets_T)
    with _OpSpy() as spy:
        loss = chunked_linear_cross_entropy(hidden_TH, frozen_VH, targets_T, chunk_size=16)
        (d_hidden,) = _grads(loss, (hidden_TH,))
    assert_close("dhidden", ref_dhidden, d_hidden, FP32, WHY_FP32)
    assert spy.matmuls == 2 * 4, f"4 chunks x (logits, dhidden) expected, saw {spy.matmuls} matmuls"
    frozen_TH = hidden_TH.detach()  # and the other way round: only the weight trains
    (d_weight,) = _grads(chunked_linear_cross_entropy(frozen_TH, weight_VH, targets_T, chunk_size=16), (weight_VH,))
    assert_close("dweight", ref_dweight, d_weight, FP32, WHY_FP32)


def test_no_tensor_of_size_T_by_V_is_created_or_saved():
    """Fails if any op (forward or backward) makes a [T, V] tensor, or if one is saved for backward."""
    T, V = 200, 97
    hidden_TH, weight_VH, bias_V, targets_T = _inputs(T=T, V=V)
    budget = 30 * V * 8  # 8 bytes per logit (two fp32 buffers), so 30 rows per chunk
    rows = chunk_rows_for_budget(V, budget)
    assert rows == 30
    saved = []
    record = lambda t: saved.append(t.numel()) or t  # noqa: E731
    with _OpSpy(V) as spy, torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, memory_budget_bytes=budget)
        _grads(loss, (hidden_TH, weight_VH, bias_V))
    chunks = -(-T // rows)
    assert chunks == 7 and spy.matmuls == 3 * chunks, f"expected 3 matmuls x {chunks} chunks, saw {spy.matmuls}"
    assert spy.logit_rows == rows, f"a [{spy.logit_rows}, V] tensor was made; chunks have {rows} rows"
    assert spy.largest < T * V, f"an op returned {spy.largest} elements, as many as full logits ({T * V})"
    assert saved and max(saved) < T * V, f"saved tensors {saved} include one of T*V = {T * V} elements"
    with _OpSpy(V) as naive:  # the spy does catch full logits, so the checks above can fail
        F.cross_entropy(F.linear(hidden_TH, weight_VH, bias_V), targets_T, reduction="sum").backward()
    assert naive.largest >= T * V and naive.logit_rows == T


def test_default_chunk_fits_two_gib_at_qwen35_shape():
    V = 248320  # Qwen3.5 vocabulary
    rows = chunk_rows_for_budget(V)
    assert rows == 1024 and rows * V * 8 <= DEFAULT_BUDGET_BYTES
    assert chunk_rows_for_budget(V, 1) == 1  # never zero rows


@pytest.mark.parametrize("chunk_size", [5, 64])
def test_per_token_logprobs_and_entropy_match_log_softmax(chunk_size, nan_empty):
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    leaves = [t.detach().requires_grad_() for t in (hidden_TH, weight_VH, bias_V)]
    logp_TV = torch.log_softmax(F.linear(*leaves), dim=1)
    trained_T = targets_T != -100
    ref_lp = torch.where(trained_T, logp_TV.gather(1, targets_T.clamp(min=0)[:, None])[:, 0], 0.0)
    ref_ent = -(logp_TV.exp() * logp_TV).sum(dim=1)
    up_lp, up_ent = torch.randn(len(targets_T)), torch.randn(len(targets_T))  # arbitrary upstream grads
    ref_grads = _grads((ref_lp * up_lp + ref_ent * up_ent).sum(), leaves, retain_graph=True)
    lp, ent = per_token_logprobs_and_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=chunk_size)
    grads = _grads((lp * up_lp + ent * up_ent).sum(), (hidden_TH, weight_VH, bias_V))
    assert_close("logprobs", ref_lp, lp, FP32, WHY_FP32)
    assert_close("entropy", ref_ent, ent, FP32, WHY_FP32)
    for name, ref, got in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
        assert_close(name, ref, got, FP32, WHY_FP32)
    only_lp = per_token_logprobs(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=chunk_size)
    only_ent = per_token_entropy(hidden_TH, weight_VH, bias_V=bias_V, chunk_size=chunk_size)
    assert_close("logprobs alone", ref_lp, only_lp, FP32, WHY_FP32)
    assert_close("entropy alone", ref_ent, only_ent, FP32, WHY_FP32)
    grads = _grads((only_lp * up_lp).sum(), (hidden_TH, weight_VH, bias_V))
    ref_grads = _grads((ref_lp * up_lp).sum(), leaves)
    for name, ref, got in zip(("dhidden lp", "dweight lp", "dbias lp"), ref_grads, grads):
        assert_close(name, ref, got, FP32, WHY_FP32)


def test_per_token_logprobs_backward_never_builds_full_logits():
    T, V = 120, 97
    hidden_TH, weight_VH, bias_V, targets_T = _inputs(T=T, V=V)
    with _OpSpy(V) as spy:
        lp, ent = per_token_logprobs_and_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=16)
        _grads((lp + ent).sum(), (hidden_TH, weight_VH, bias_V))
    assert spy.logit_rows == 16, f"a [{spy.logit_rows}, V] tensor was made; chunks have 16 rows (T = {T})"
    assert spy.largest < T * V, f"an op returned {spy.largest} elements, as many as full logits ({T * V})"
    assert spy.matmuls == 8 * 4, f"8 chunks x (logits fwd, logits recompute, dhidden, dweight), saw {spy.matmuls}"


def _packed_labels(B=2, T=19, V=97, seed=1):
    """[B, T] labels of rows packed from documents: a document's first label is -100 (as collate does)."""
    gen = torch.Generator().manual_seed(seed)
    labels_BT = torch.randint(0, V, (B, T), generator=gen)
    labels_BT[0, 0] = -100  # row 1 keeps a trained first label, as labels=input_ids do: the shift drops it
    labels_BT[:, 7] = -100  # a second document starts at 7
    labels_BT[0, 12:15] = -100  # a masked prompt
    return labels_BT


@pytest.mark.parametrize("num_items", [None, 23, "tensor"])
def test_causal_lm_loss_matches_transformers(num_items):
    B, T, H, V = 2, 19, 24, 97
    hidden_TH, weight_VH, _, _ = _inputs(T=B * T, H=H, V=V, bias=False)
    hidden_BTH = hidden_TH.detach().reshape(B, T, H).requires_grad_()
    labels_BT = _packed_labels(B, T, V)
    if num_items == "tensor":
        num_items = torch.tensor(23)
    ref = ForCausalLMLoss(hidden_BTH @ weight_VH.T, labels_BT, V, num_items_in_batch=num_items)
    ref_grads = _grads(ref, (hidden_BTH, weight_VH))
    loss = causal_lm_loss(hidden_BTH, weight_VH, labels_BT, num_items, chunk_size=8)
    grads = _grads(loss, (hidden_BTH, weight_VH))
    assert_close("loss", ref, loss, FP32, WHY_FP32)
    for name, r, g in zip(("dhidden", "dweight"), ref_grads, grads):
        assert_close(name, r, g, FP32, WHY_FP32)
    shifted_BT = F.pad(labels_BT[:, 1:], (0, 1), value=-100)
    by_shift = causal_lm_loss(hidden_BTH, weight_VH, None, num_items, shift_labels_BT=shifted_BT)
    assert_close("loss from shift_labels", ref, by_shift, FP32, WHY_FP32)


@pytest.mark.parametrize("bad", [-1, torch.tensor(-1), torch.tensor([3, 4])])
def test_bad_num_items_refused_before_the_loss_is_computed(monkeypatch, bad):
    """A host count (int or CPU tensor) is checked, and used as a number (no copy to the device, which waits
    for the GPU's stream), before any compute; so is a count that is not one number."""
    import padfree.loss as loss_module

    monkeypatch.setattr(loss_module, "chunked_linear_cross_entropy", lambda *a, **k: pytest.fail("computed first"))
    with pytest.raises(ValueError, match="num_items_in_batch must be"):
        causal_lm_loss(torch.randn(1, 5, 8), torch.randn(11, 8), torch.randint(0, 11, (1, 5)), bad)


def test_count_and_all_masked_micro_batch():
    labels_BT = _packed_labels()
    count = count_trained_tokens(labels_BT)
    assert count.dim() == 0 and count.dtype == torch.int64 and count.device == labels_BT.device
    shifted_BT = F.pad(labels_BT[:, 1:], (0, 1), value=-100)
    assert count.item() == int((shifted_BT != -100).sum()) == 2 * 18 - 5  # 18 predictions a row, 5 masked
    hidden_BTH = torch.randn(2, 19, 24, requires_grad=True)
    loss = causal_lm_loss(hidden_BTH, torch.randn(97, 24), torch.full_like(labels_BT, -100))
    (grad,) = _grads(loss, (hidden_BTH,))
    assert loss.item() == 0.0 and not grad.any()  # transformers gives 0/0 = NaN here


def test_gradient_accumulation_equals_one_big_batch():
    H, V = 24, 97
    weight_VH = (torch.randn(V, H, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
    micro = []
    for k, T in enumerate((31, 12, 57)):  # different lengths and masks: different trained-token counts
        labels_BT = _packed_labels(1, T, V, seed=10 + k)
        labels_BT[0, : 5 * k] = -100
        micro.append((torch.randn(1, T, H, generator=torch.Generator().manual_seed(20 + k)), labels_BT))
    counts = [count_trained_tokens(labels) for _, labels in micro]
    assert len({int(c) for c in counts}) == 3, f"counts {counts} must differ for the test to mean anything"
    total = torch.stack(counts).sum()  # summed (and, with ranks, all-reduced) before the first forward
    accumulated = sum(causal_lm_loss(h, weight_VH, labels, total, chunk_size=16) for h, labels in micro)
    (acc_grad,) = _grads(accumulated, (weight_VH,))
    # One big batch: the rows end to end (each starts with label -100, so nothing crosses them).
    big = causal_lm_loss(torch.cat([h for h, _ in micro], 1), weight_VH, torch.cat([lab for _, lab in micro], 1))
    (big_grad,) = _grads(big, (weight_VH,))
    assert_close("accumulated loss", big, accumulated, FP32, WHY_FP32)
    assert_close("accumulated dweight", big_grad, acc_grad, FP32, WHY_FP32)
    mean_of_means = sum(causal_lm_loss(h, weight_VH, labels) for h, labels in micro) / len(micro)
    assert abs(mean_of_means.item() - big.item()) > 1e-3 * abs(big.item()), "mean of means should differ"


def test_autocast_matches_linear_under_autocast():
    hidden_TH, weight_VH, bias_V, targets_T = _inputs(T=40, H=32, V=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden_TH, weight_VH, bias_V).float(), targets_T, reduction="sum")
        loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=16)
    ref_grads = _grads(ref, (hidden_TH, weight_VH, bias_V))
    grads = _grads(loss, (hidden_TH, weight_VH, bias_V))
    assert all(g.dtype == torch.float32 for g in grads), "grads come back in the fp32 params' dtype"
    why = "both compute bf16 logits from the same casts; only bf16 rounding of d(weight) per chunk differs"
    assert_close("loss", ref, loss, 1e-5, why)
    for name, r, g in zip(("dhidden", "dweight", "dbias"), ref_grads, grads):
        assert_close(name, r, g, 1e-2, why)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(hidden=torch.randn(5, 8, dtype=torch.bfloat16)), "dtype mismatch"),
        (dict(hidden=torch.randn(5, 7)), "hidden size mismatch"),
        (dict(targets=torch.zeros(4, dtype=torch.long)), "targets_T must be"),
        (dict(targets=torch.zeros(5)), "integer token ids"),
        (dict(chunk_size=0), "chunk_size must be positive"),
    ],
)
def test_bad_inputs_raise_with_the_fix(change, message):
    args = dict(hidden=torch.randn(5, 8), weight=torch.randn(11, 8), targets=torch.zeros(5, dtype=torch.long))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        chunked_linear_cross_entropy(
            args["hidden"], args["weight"], args["targets"], chunk_size=args.get("chunk_size")
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(softmax_backend="triton"), "softmax_backend='triton' is not one of"),
        (dict(softmax_backend="fla", compile_backend="aot_eager"), "pass one of them"),
    ],
)
def test_bad_softmax_backend_raises_before_compute(kwargs, message):
    """Refused before any chunk runs: the inputs' gradients stay unset."""
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    with pytest.raises(ValueError, match=message):
        chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, **kwargs)
    assert hidden_TH.grad is None and weight_VH.grad is None


def test_fla_softmax_backend_refuses_cpu_tensors():
    """On a machine with FLA the refusal names the device; without it, the missing package."""
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    message = "needs CUDA tensors, got device cpu" if fla_available() else "needs flash-linear-attention"
    with pytest.raises(ValueError, match=message):
        chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, softmax_backend="fla")


def test_auto_softmax_backend_on_cpu_is_the_torch_path():
    """On CPU "auto" never picks FLA's CUDA kernels: the loss and gradients equal "torch"'s bit for bit."""
    hidden_TH, weight_VH, bias_V, targets_T = _inputs()
    results = []
    for softmax_backend in ("auto", "torch"):
        loss = chunked_linear_cross_entropy(hidden_TH, weight_VH, targets_T, bias_V=bias_V, chunk_size=16,
                                            softmax_backend=softmax_backend)  # fmt: skip
        results.append((loss, *_grads(loss, (hidden_TH, weight_VH, bias_V))))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_fla_softmax_chunks_are_sized_by_the_logits_dtype():
    """FLA's kernels keep only the e-byte logits of a chunk, so a budget holds 8/e times the rows."""
    assert chunk_rows_for_budget(248_320, DEFAULT_BUDGET_BYTES, bytes_per_logit=2) == 4224
    assert chunk_rows_for_budget(248_320, DEFAULT_BUDGET_BYTES) == 1024
