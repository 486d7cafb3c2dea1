"""Per-token log-probabilities and entropies of `hidden @ weight.T`, chunked, for RL-style losses.

Shape letters: T tokens, H hidden size, V vocabulary, C rows of one chunk.

Unlike the summed cross-entropy, these outputs are [T] vectors whose upstream gradient is only known
in backward, so the gradients cannot be precomputed in forward. Instead backward recomputes each
chunk's logits (one more [C, H] x [H, V] matmul per chunk, the price of never keeping [T, V]).
Per chunk the transient memory is the same two fp32 [C, V] buffers as the cross-entropy
(padfree.loss_chunked), sized by the same byte budget; forward keeps only the [T] outputs.

Gradients, with p = softmax(z), l = log p, H = -sum(p * l) and upstream g_lp, g_ent:
  d logp[target] / dz = onehot(target) - p
  d H / dz           = -p * (l + H)
  so dz = g_lp * onehot - p * (g_lp + g_ent * (l + H)).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from padfree.loss_chunked import (
    DEFAULT_BUDGET_BYTES,
    add_weight_grad,
    apply_autocast,
    check_linear_inputs,
    chunk_log_softmax,
    chunk_rows_for_budget,
)


def _chunk_outputs(hidden_CH, targets_C, weight_VH, bias_V, ignore_index, with_entropy):
    """logprobs [C] (0 where ignored) and entropy [C] (or None) of one chunk."""
    trained_C = targets_C != ignore_index
    logp_CV = chunk_log_softmax(hidden_CH, weight_VH, bias_V)
    logp_C = logp_CV.gather(1, torch.where(trained_C, targets_C, 0).unsqueeze(1)).squeeze(1)
    entropy_C = -logp_CV.exp().mul_(logp_CV).sum(dim=1) if with_entropy else None
    return torch.where(trained_C, logp_C, 0.0), entropy_C


def _chunk_grads(hidden_CH, targets_C, weight_VH, bias_V, ignore_index, g_lp_C, g_ent_C, entropy_C, grads):
    """Recompute one chunk's log-softmax and add its gradients into grads = (dh_CH, dw_VH, db_V)."""
    dh_CH, dw_VH, db_V = grads
    trained_C = targets_C != ignore_index
    safe_C1 = torch.where(trained_C, targets_C, 0).unsqueeze(1)
    g_lp_C1 = torch.zeros_like(trained_C, dtype=torch.float32) if g_lp_C is None else g_lp_C.float()
    g_lp_C1 = torch.where(trained_C, g_lp_C1, 0.0).unsqueeze(1)
    grad_CV = chunk_log_softmax(hidden_CH, weight_VH, bias_V)  # l, turned into dz in place below
    if g_ent_C is not None:
        probs_CV = grad_CV.exp()
        grad_CV.add_(entropy_C.unsqueeze(1)).mul_(g_ent_C.float().unsqueeze(1)).add_(g_lp_C1).mul_(probs_CV).neg_()
        del probs_CV
    else:
        grad_CV.exp_().mul_(-g_lp_C1)
    grad_CV.scatter_add_(1, safe_C1, g_lp_C1)  # + g_lp * onehot(target)
    if db_V is not None:
        db_V += grad_CV.sum(dim=0)
    grad_CV = grad_CV.to(hidden_CH.dtype)  # rounded once, as autograd would before the matmuls
    if dh_CH is not None:
        torch.mm(grad_CV, weight_VH, out=dh_CH)
    if dw_VH is not None:
        add_weight_grad(dw_VH, grad_CV, hidden_CH)


class _ChunkedLogprobs(torch.autograd.Function):
    """Forward: logprobs [T] (0 where ignored), entropy [T] (empty unless asked). Backward: recompute."""

    @staticmethod
    def forward(ctx, hidden_TH, weight_VH, bias_V, targets_T, chunk_rows, ignore_index, with_entropy):
        num_tokens = hidden_TH.shape[0]
        f32 = dict(dtype=torch.float32, device=hidden_TH.device)
        logprobs_T = torch.zeros(num_tokens, **f32)
        entropy_T = torch.zeros(num_tokens if with_entropy else 0, **f32)
        for start in range(0, num_tokens, chunk_rows):
            end = min(start + chunk_rows, num_tokens)
            logprobs_C, entropy_C = _chunk_outputs(
                hidden_TH[start:end], targets_T[start:end], weight_VH, bias_V, ignore_index, with_entropy
            )
            logprobs_T[start:end] = logprobs_C
            if with_entropy:
                entropy_T[start:end] = entropy_C
        ctx.save_for_backward(hidden_TH, weight_VH, bias_V, targets_T, entropy_T)
        ctx.chunk_rows, ctx.ignore_index, ctx.with_entropy = chunk_rows, ignore_index, with_entropy
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: skip its work
        if not with_entropy:
            ctx.mark_non_differentiable(entropy_T)
        return logprobs_T, entropy_T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs_T, grad_entropy_T):
        hidden_TH, weight_VH, bias_V, targets_T, entropy_T = ctx.saved_tensors
        need_dh, need_dw, need_db = ctx.needs_input_grad[:3]
        if not ctx.with_entropy:
            grad_entropy_T = None
        if grad_logprobs_T is None and grad_entropy_T is None:
            return None, None, None, None, None, None, None
        dh = torch.empty_like(hidden_TH) if need_dh else None
        acc_dtype = torch.float32
        dw_VH = torch.zeros(weight_VH.shape, dtype=acc_dtype, device=weight_VH.device) if need_dw else None
        db_V = torch.zeros(weight_VH.shape[0], dtype=acc_dtype, device=weight_VH.device) if need_db else None
        rows = ctx.chunk_rows
        for start in range(0, hidden_TH.shape[0], rows):
            end = min(start + rows, hidden_TH.shape[0])
            _chunk_grads(
                hidden_TH[start:end],
                targets_T[start:end],
                weight_VH,
                bias_V,
                ctx.ignore_index,
                None if grad_logprobs_T is None else grad_logprobs_T[start:end],
                None if grad_entropy_T is None else grad_entropy_T[start:end],
                None if grad_entropy_T is None else entropy_T[start:end],
                (None if dh is None else dh[start:end], dw_VH, db_V),
            )
        dw = None if dw_VH is None else dw_VH.to(weight_VH.dtype)
        db = None if db_V is None else db_V.to(bias_V.dtype)
        return dh, dw, db, None, None, None, None


def per_token_logprobs_and_entropy(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    *,
    bias_V: torch.Tensor | None = None,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    with_entropy: bool = True,
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ W.T + b)[t, targets[t]] and the softmax entropy, both [T] fp32, differentiable.

    hidden_TH: [T, H], weight_VH: [V, H], bias_V: [V] or None, targets_T: [T] ids (ignore_index gives
    logprob 0 and no gradient). The entropy does not depend on targets and is given for every token;
    with_entropy=False returns an empty, non-differentiable entropy (and skips its work).
    """
    hidden_TH, weight_VH, bias_V = apply_autocast(hidden_TH, weight_VH, bias_V)
    check_linear_inputs(hidden_TH, weight_VH, targets_T, bias_V)
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}; pass None to size chunks from the budget.")
    rows = chunk_size or chunk_rows_for_budget(weight_VH.shape[0], memory_budget_bytes)
    with torch.autocast(device_type=hidden_TH.device.type, enabled=False):
        return _ChunkedLogprobs.apply(hidden_TH, weight_VH, bias_V, targets_T.long(), rows, ignore_index, with_entropy)


def per_token_logprobs(hidden_TH, weight_VH, targets_T, **kwargs) -> torch.Tensor:
    """[T] fp32 log-probabilities of `targets_T`; see per_token_logprobs_and_entropy for the arguments.

    >>> h, w, t = torch.randn(4, 8), torch.randn(11, 8), torch.tensor([1, 2, 3, 4])
    >>> ref = torch.log_softmax(h @ w.T, dim=1).gather(1, t[:, None])[:, 0]
    >>> bool(torch.allclose(per_token_logprobs(h, w, t, chunk_size=3), ref, atol=1e-5))
    True
    """
    return per_token_logprobs_and_entropy(hidden_TH, weight_VH, targets_T, with_entropy=False, **kwargs)[0]


def per_token_entropy(hidden_TH, weight_VH, **kwargs) -> torch.Tensor:
    """[T] fp32 entropy of softmax(hidden @ W.T + b) per token, differentiable, chunked."""
    no_targets_T = torch.full(hidden_TH.shape[:1], kwargs.get("ignore_index", -100), device=hidden_TH.device)
    return per_token_logprobs_and_entropy(hidden_TH, weight_VH, no_targets_T, with_entropy=True, **kwargs)[1]
