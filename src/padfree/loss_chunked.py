"""Chunked linear cross-entropy: summed CE of `hidden @ weight.T` without ever holding [T, V] logits.

Shape letters: T tokens, H hidden size, V vocabulary, C rows of one chunk (C <= T).

Qwen3.5's vocabulary is V = 248,320. Full logits for T = 16,384 tokens are T*V*4 B = 16.3 GB in fp32,
and plain autograd keeps several such tensors (bf16 logits, their fp32 upcast, log-softmax, its
gradient). Here the forward walks over the tokens C rows at a time, and for each chunk computes the
logits, the loss and, at once, the chunk's gradients: d(loss)/d(hidden) for those rows and its
contribution to d(loss)/d(weight) (fp32 accumulator). Only those gradients are saved; backward just
scales them by the incoming scalar gradient. Logits are computed in the input dtype (as
`nn.Linear` does) and upcast to fp32 for log-softmax: the numbers transformers' loss sees.

Memory math, per chunk, e = bytes per element of the input dtype (bf16: 2, fp32: 4):
  logits [C, V] in the input dtype, then the fp32 upcast (the e-byte logits are freed right after),
  then log-softmax into a new fp32 buffer: at most 2 fp32 buffers at once, C*V*8 bytes.
  d(logits) = exp(log-softmax) - onehot, written straight in the input dtype: C*V*(4 + e) <= C*V*8.
  d(weight) for the chunk: on CPU g.T @ h is a [V, H] temporary in the input dtype (none for fp32,
  and none on CUDA: `add_weight_grad`), alongside the C*V*e gradient: C*V*e + V*H*e.
  So the op's own peak is max(C*V*8, C*V*e + V*H*e), and `chunk_rows_for_budget` picks C with
  C*V*8 <= budget. Kept from forward to backward: d(hidden) [T, H] in the input dtype, d(weight) [V, H]
  and d(bias) [V] in fp32. Not counted: the inputs and the fp32 d(weight) accumulator.
  At T = 16384, H = 1024, V = 248320, bf16, default 2 GiB budget: C = 1024, peak 1024*248320*8 B
  = 2.03 GB (1.89 GiB); the d(weight) phase is 0.51 GB + 0.51 GB. The fp32 accumulator is 1.02 GB.
  Measured there (benchmarks/bench_loss.py, H100, torch 2.11): 2.90 GiB above the inputs for forward
  + backward = 1.89 op + 0.95 accumulator + 0.03 d(hidden); full logits: 45.5 GiB.
With `compile_backend` (padfree.patch(compile_elementwise=True) passes "inductor"), the fp32 upcast,
log-softmax, exp and the target's -1 of each chunk are one compiled function of the e-byte logits
(`logits_grad`): its kernels read the logits and write d(logits) without the two fp32 [C, V]
buffers, whose passes were ~20 of 225 ms of kernel time in the fifth session's H200 profile
(8,192-token rows, docs/benchmarks.md). Same formulas; the chunk size is kept, so memory only falls.
Ignored targets are masked on the [C, H] side (their hidden rows and d(hidden) rows are zeroed), so
masking costs C*H work instead of a pass over C*V.

With `softmax_backend` "fla" ("auto" picks it for CUDA inputs when flash-linear-attention is
installed and nothing is compiled), each chunk's softmax runs in FLA's cross-entropy Triton kernels
(`fla.modules.fused_cross_entropy`): one kernel reads the e-byte logits and writes each row's loss and
log-sum-exp (fp32 inside), a second reads them again and overwrites them in place with
softmax - onehot, zero on ignored rows. That is three passes over C*V*e bytes, where the eager path
also writes and reads two fp32 [C, V] buffers (upcast, log-softmax, exp); with no fp32 [C, V] buffer
a chunk's transient is the logits alone:
C*V*e bytes, and the chunk is sized with e bytes per logit instead of 8 (4x the rows in bf16). The
d(weight) of a chunk is then added by one cuBLAS call that reads e-byte inputs and accumulates into
the fp32 buffer (`addmm` with out_dtype), without the [V, H] temporary. Measured (H100, T = 8192,
bf16, benchmarks/bench_loss.py): forward + backward 22.3 ms against 48.3 ms for the eager path, the
same 2.9 GiB peak (docs/benchmarks.md, ninth session). FLA's own fused linear
cross-entropy is not used: it upcasts each chunk's logits and inputs to fp32 for an fp32 d(weight)
matmul, and measured 2.4x slower than this module's eager path (docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from padfree.ops._backend import fla_available

DEFAULT_BUDGET_BYTES = 2 * 1024**3  # the op's own transient memory, see the module docstring
BYTES_PER_LOGIT = 8  # two [C, V] fp32 buffers at once: upcast logits and their log-softmax
_ROW_MULTIPLE = 128  # chunk rows rounded down to a multiple of this: matmul tiles stay full
SOFTMAX_BACKENDS = ("auto", "torch", "fla")


def chunk_rows_for_budget(
    vocab_size: int, budget_bytes: int = DEFAULT_BUDGET_BYTES, bytes_per_logit: int = BYTES_PER_LOGIT
) -> int:
    """Rows C per chunk so that the chunk's transient buffers, C * V * bytes_per_logit, fit in budget_bytes
    (8 for the eager and compiled softmax, the logits' element size for FLA's; module docstring)."""
    if budget_bytes <= 0:
        raise ValueError(
            f"memory budget must be positive, got {budget_bytes} bytes; the default is {DEFAULT_BUDGET_BYTES}."
        )
    rows = budget_bytes // (vocab_size * bytes_per_logit)
    if rows >= 2 * _ROW_MULTIPLE:
        rows -= rows % _ROW_MULTIPLE
    return max(1, int(rows))


def chunk_log_softmax(hidden_CH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor | None) -> torch.Tensor:
    """fp32 log-softmax [C, V] of one chunk's logits, computed in the input dtype first (as nn.Linear)."""
    logits_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V).float()
    # Not log_softmax(dtype=fp32) on the e-byte logits: on CPU that keeps them alive beside two fp32 buffers.
    return torch.log_softmax(logits_CV, dim=1)


def logits_grad(logits_CV: torch.Tensor, safe_C1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(CE)/d(logits) = softmax - onehot [C, V] in the logits' dtype, log p(target) [C] fp32) of one
    chunk's logits; rows of ignored targets are not masked here. Run compiled (`_compiled_logits_grad`):
    eagerly it would hold three fp32 [C, V] temporaries, over the chunk budget, which is why the eager
    path in `_chunk_loss_and_grads` writes the same formula in place instead."""
    logits32_CV = logits_CV.float()
    logsumexp_C1 = torch.logsumexp(logits32_CV, dim=1, keepdim=True)
    logp_target_C = (logits32_CV.gather(1, safe_C1) - logsumexp_C1).squeeze(1)
    columns_1V = torch.arange(logits_CV.shape[1], device=logits_CV.device).unsqueeze(0)
    grad_CV = torch.exp(logits32_CV - logsumexp_C1) - (columns_1V == safe_C1).float()
    return grad_CV.to(logits_CV.dtype), logp_target_C


@functools.cache
def _compiled_logits_grad(backend: str):
    return torch.compile(logits_grad, backend=backend)


def add_weight_grad(dw_VH: torch.Tensor, grad_CV: torch.Tensor, hidden_CH: torch.Tensor) -> None:
    """dw_VH += grad_CV.T @ hidden_CH, with dw_VH the fp32 accumulator of a chunked loss's d(weight).

    On CUDA an e-byte product accumulates into fp32 inside the one cuBLAS call (`addmm` with out_dtype);
    the CPU has no such kernel (torch 2.13), so there the product is one [V, H] temporary in the input
    dtype, added after.
    """
    if grad_CV.dtype == dw_VH.dtype:
        dw_VH.addmm_(grad_CV.t(), hidden_CH)
    elif dw_VH.is_cuda:
        torch.addmm(dw_VH, grad_CV.t(), hidden_CH, out_dtype=dw_VH.dtype, out=dw_VH)
    else:
        dw_VH += grad_CV.t() @ hidden_CH


def _fla_softmax_grad(logits_CV: torch.Tensor, targets_C: torch.Tensor, ignore_index: int, needs_grad: bool):
    """Summed CE of one chunk's logits through FLA's Triton kernels; if needs_grad, logits_CV is overwritten
    with d(sum CE)/d(logits) = softmax - onehot, rows of ignored targets exactly 0 (module docstring)."""
    from fla.modules.fused_cross_entropy.ops import cross_entropy_bwd, cross_entropy_fwd

    loss_C, _, lse_C, _, _ = cross_entropy_fwd(logits=logits_CV, target=targets_C, ignore_index=ignore_index)
    if needs_grad:
        ones_C = torch.ones((), dtype=torch.float32, device=logits_CV.device).expand(targets_C.shape[0])
        cross_entropy_bwd(logits=logits_CV, target=targets_C, lse=lse_C, dloss=ones_C, ignore_index=ignore_index,
                          inplace_backward=True)  # fmt: skip
    return loss_C.sum()  # FLA writes 0 for ignored targets


def _fla_chunk_loss_and_grads(hidden_CH, targets_C, weight_VH, bias_V, ignore_index, dh_CH, dw_VH, db_V):
    """`_chunk_loss_and_grads` with FLA's softmax kernels: its gradient rows of ignored targets are already
    0, so nothing is masked, and d(weight) accumulates into fp32 inside cuBLAS (module docstring)."""
    needs_grad = not (dh_CH is None and dw_VH is None and db_V is None)
    grad_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V)
    loss = _fla_softmax_grad(grad_CV, targets_C.contiguous(), ignore_index, needs_grad)  # FLA reads ids at stride 1
    if dh_CH is not None:
        torch.mm(grad_CV, weight_VH, out=dh_CH)
    if dw_VH is not None:
        add_weight_grad(dw_VH, grad_CV, hidden_CH)
    if db_V is not None:
        db_V += grad_CV.sum(0, dtype=torch.float32)
    return loss


def _chunk_loss_and_grads(hidden_CH, targets_C, weight_VH, bias_V, ignore_index, dh_CH, dw_VH, db_V, softmax_grad):
    """Summed CE of one chunk; adds its gradients into dh_CH (written), dw_VH, db_V (accumulated) if given.
    `softmax_grad`: "fla" for FLA's kernels, a compiled `logits_grad`, or None for the eager ops.

    A function of its own so that every [C, V] temporary is freed when it returns.
    """
    if softmax_grad == "fla":
        return _fla_chunk_loss_and_grads(hidden_CH, targets_C, weight_VH, bias_V, ignore_index, dh_CH, dw_VH, db_V)
    trained_C = targets_C != ignore_index
    safe_C1 = torch.where(trained_C, targets_C, 0).unsqueeze(1)  # -100 is no valid index
    dtype = hidden_CH.dtype
    needs_grad = not (dh_CH is None and dw_VH is None and db_V is None)
    if needs_grad and softmax_grad is not None:
        logits_CV = torch.nn.functional.linear(hidden_CH, weight_VH, bias_V)
        grad_CV, logp_target_C = softmax_grad(logits_CV, safe_C1)
        del logits_CV
        loss = -torch.where(trained_C, logp_target_C, 0.0).sum()
    else:
        logp_CV = chunk_log_softmax(hidden_CH, weight_VH, bias_V)
        logp_target_C = logp_CV.gather(1, safe_C1).squeeze(1)
        loss = -torch.where(trained_C, logp_target_C, 0.0).sum()  # where: ignored rows add an exact 0
        if not needs_grad:
            return loss
        # d(sum CE)/d(logits) = softmax - onehot(target), rounded once to the input dtype, as autograd does.
        if dtype == torch.float32:
            grad_CV = logp_CV.exp_()
        else:
            grad_CV = torch.empty(logp_CV.shape, dtype=dtype, device=logp_CV.device)
            torch.exp(logp_CV, out=grad_CV)
        del logp_CV
        grad_CV.scatter_(1, safe_C1, (logp_target_C.exp() - 1).to(dtype).unsqueeze(1))
    # Ignored rows of grad_CV are left as they are; zeroing their [C, H] partners masks them exactly.
    trained_C1 = trained_C.unsqueeze(1).to(dtype)
    if dh_CH is not None:
        torch.mm(grad_CV, weight_VH, out=dh_CH)
        dh_CH.mul_(trained_C1)
    if dw_VH is not None:
        add_weight_grad(dw_VH, grad_CV, hidden_CH * trained_C1)
    if db_V is not None:
        db_V += torch.mv(grad_CV.t(), trained_C1.squeeze(1))
    return loss


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Forward: summed CE and all its gradients, chunk by chunk. Backward: gradients * d(out)."""

    @staticmethod
    def forward(ctx, hidden_TH, weight_VH, bias_V, targets_T, chunk_rows, ignore_index, need_dh, need_dw, need_db,
                softmax_grad):  # fmt: skip
        num_tokens, vocab = hidden_TH.shape[0], weight_VH.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=hidden_TH.device)
        dh_TH = torch.empty_like(hidden_TH) if need_dh else None
        dw_VH = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if need_dw else None
        db_V = torch.zeros(vocab, dtype=torch.float32, device=weight_VH.device) if need_db else None
        for start in range(0, num_tokens, chunk_rows):
            end = min(start + chunk_rows, num_tokens)
            dh_CH = None if dh_TH is None else dh_TH[start:end]
            loss += _chunk_loss_and_grads(
                hidden_TH[start:end], targets_T[start:end], weight_VH, bias_V, ignore_index, dh_CH, dw_VH, db_V,
                softmax_grad,
            )
        ctx.save_for_backward(dh_TH, dw_VH, db_V)
        ctx.weight_dtype = weight_VH.dtype
        ctx.bias_dtype = None if bias_V is None else bias_V.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_hidden_TH, grad_weight_VH, grad_bias_V = ctx.saved_tensors
        dh = dw = db = None
        if grad_hidden_TH is not None:
            dh = grad_hidden_TH * grad_loss.to(grad_hidden_TH.dtype)
        if grad_weight_VH is not None:
            # Scale in fp32 and write straight into the weight dtype: no [V, H] fp32 temporary.
            dw = torch.empty(grad_weight_VH.shape, dtype=ctx.weight_dtype, device=grad_weight_VH.device)
            torch.mul(grad_weight_VH, grad_loss, out=dw)
        if grad_bias_V is not None:
            db = (grad_bias_V * grad_loss).to(ctx.bias_dtype)
        return dh, dw, db, None, None, None, None, None, None, None


def check_softmax_backend(softmax_backend: str, compiled: bool, name: str = "softmax_backend") -> None:
    """Refuse a softmax backend that cannot run, before any compute (`name`: the argument as the caller
    knows it; `compiled`: a compile_backend is also given)."""
    if softmax_backend not in SOFTMAX_BACKENDS:
        raise ValueError(f"{name}={softmax_backend!r} is not one of {SOFTMAX_BACKENDS}; pass one of those.")
    if softmax_backend != "fla":
        return
    if compiled:
        raise ValueError(
            f"{name}='fla' runs FLA's kernels, the compile option compiles PyTorch's; pass one of them "
            f"({name}='auto' with compiling compiles)."
        )
    if not fla_available():
        raise ValueError(f"{name}='fla' needs flash-linear-attention: pip install 'padfree[fla]'.")


def _use_fla_softmax(softmax_backend: str, compile_backend: str | None, device: torch.device) -> bool:
    """Whether this call's chunks run FLA's softmax kernels; refuses impossible settings before any compute."""
    check_softmax_backend(softmax_backend, compile_backend is not None)
    if softmax_backend != "fla":
        return softmax_backend == "auto" and compile_backend is None and device.type == "cuda" and fla_available()
    if device.type != "cuda":
        raise ValueError(
            f"softmax_backend='fla' (padfree.patch's loss_backend) needs CUDA tensors, got device {device}; "
            "pass 'auto' to use PyTorch's ops off the GPU."
        )
    return True


def check_linear_inputs(
    hidden_TH: torch.Tensor, weight_VH: torch.Tensor, targets_T: torch.Tensor, bias_V: torch.Tensor | None
) -> None:
    """Raise ValueError naming the offending shapes/dtypes/devices, and the fix, for a [T,H] x [V,H] op."""
    if hidden_TH.dim() != 2 or weight_VH.dim() != 2:
        raise ValueError(
            f"expected hidden_TH [T, H] and weight_VH [V, H], got {tuple(hidden_TH.shape)} and "
            f"{tuple(weight_VH.shape)}; flatten batch dims first (hidden.reshape(-1, H))."
        )
    if hidden_TH.shape[1] != weight_VH.shape[1]:
        raise ValueError(
            f"hidden size mismatch: hidden_TH has H={hidden_TH.shape[1]}, weight_VH has H={weight_VH.shape[1]}."
        )
    if targets_T.shape != (hidden_TH.shape[0],):
        raise ValueError(f"targets_T must be [T] = [{hidden_TH.shape[0]}], got {tuple(targets_T.shape)}.")
    if targets_T.is_floating_point() or targets_T.is_complex():
        raise ValueError(f"targets_T must hold integer token ids, got dtype {targets_T.dtype}; use .long().")
    if not hidden_TH.is_floating_point():
        raise ValueError(f"hidden_TH must be floating point, got {hidden_TH.dtype}.")
    if hidden_TH.dtype != weight_VH.dtype or (bias_V is not None and bias_V.dtype != weight_VH.dtype):
        raise ValueError(
            f"dtype mismatch: hidden {hidden_TH.dtype}, weight {weight_VH.dtype}, bias "
            f"{None if bias_V is None else bias_V.dtype}; cast them to one dtype (e.g. hidden.to(weight.dtype)) "
            "or call under torch.autocast, which picks the compute dtype."
        )
    if bias_V is not None and bias_V.shape != (weight_VH.shape[0],):
        raise ValueError(f"bias_V must be [V] = [{weight_VH.shape[0]}], got {tuple(bias_V.shape)}.")
    devices = {t.device for t in (hidden_TH, weight_VH, targets_T, bias_V) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"inputs live on different devices {sorted(map(str, devices))}; move them to one device.")


def apply_autocast(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast float tensors to the autocast dtype when autocast is on for their device (as F.linear would).

    The cast is an ordinary differentiable op, so gradients flow back in each tensor's own dtype.
    """
    device_type = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def chunked_linear_cross_entropy(
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    *,
    bias_V: torch.Tensor | None = None,
    chunk_size: int | None = None,
    ignore_index: int = -100,
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    compile_backend: str | None = None,
    softmax_backend: str = "auto",
) -> torch.Tensor:
    """Summed cross-entropy of `hidden_TH @ weight_VH.T (+ bias_V)` against `targets_T`, in chunks.

    hidden_TH: [T, H], weight_VH: [V, H], bias_V: [V] or None — one float dtype (or under autocast).
    targets_T: [T] integer ids in [0, V), or `ignore_index` for tokens that are not trained.
    chunk_size: rows per chunk; None sizes chunks from `memory_budget_bytes` (module docstring).
    compile_backend: a torch.compile backend ("inductor") for each chunk's softmax gradient (module
        docstring); None runs it eagerly.
    softmax_backend: each chunk's softmax and its gradient: "fla" runs flash-linear-attention's
        cross-entropy kernels (CUDA inputs only), "torch" PyTorch's ops (compiled with compile_backend),
        "auto" FLA's for CUDA inputs when it is installed and compile_backend is None, else torch's.
    Returns a 0-d fp32 tensor: the SUM over trained tokens (divide by a token count yourself, see
    padfree.loss). Equals F.cross_entropy(hidden @ W.T + b, targets, reduction="sum").

    Gradients (computed during the forward, returned in each input's dtype) are produced only for
    inputs that require grad: a frozen lm_head (LoRA) skips the d(weight) matmul entirely.
    All targets ignored gives exactly 0 and exactly-zero gradients. T = 0 is allowed and gives 0
    (a sequence-parallel rank may hold no tokens; it must still join the backward).
    Out-of-range targets are not checked (that needs a host sync): torch's gather raises on CPU.

    >>> h, w = torch.randn(5, 8), torch.randn(11, 8)
    >>> t = torch.tensor([1, -100, 3, 10, 0])
    >>> ref = torch.nn.functional.cross_entropy(h @ w.T, t, reduction="sum")
    >>> bool(torch.allclose(chunked_linear_cross_entropy(h, w, t, chunk_size=2), ref, atol=1e-5))
    True
    """
    hidden_TH, weight_VH, bias_V = apply_autocast(hidden_TH, weight_VH, bias_V)
    check_linear_inputs(hidden_TH, weight_VH, targets_T, bias_V)
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}; pass None to size chunks from the budget.")
    use_fla = _use_fla_softmax(softmax_backend, compile_backend, hidden_TH.device)
    bytes_per_logit = hidden_TH.element_size() if use_fla else BYTES_PER_LOGIT
    rows = chunk_size or chunk_rows_for_budget(weight_VH.shape[0], memory_budget_bytes, bytes_per_logit)
    grad_on = torch.is_grad_enabled()
    need_dh = grad_on and hidden_TH.requires_grad
    need_dw = grad_on and weight_VH.requires_grad
    need_db = grad_on and bias_V is not None and bias_V.requires_grad
    # The gradients are computed inside forward; autocast must not re-cast those matmuls.
    with torch.autocast(device_type=hidden_TH.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(
            hidden_TH, weight_VH, bias_V, targets_T.long(), rows, ignore_index, need_dh, need_dw, need_db,
            "fla" if use_fla else None if compile_backend is None else _compiled_logits_grad(compile_backend),
        )
