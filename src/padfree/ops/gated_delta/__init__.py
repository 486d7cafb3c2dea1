"""Varlen chunked gated delta rule (the Gated DeltaNet token mixer), FLA-compatible.

Legend: B batch, T tokens, N documents (len(cu_seqlens) - 1, or B without cu_seqlens),
H query/key heads, HV value heads (a multiple of H), K key dim, V value dim.
"""

from __future__ import annotations

from typing import Sequence

import torch

from padfree.ops._backend import resolve_backend
from padfree.ops.gated_delta import fla_backend, naive, torch_backend
from padfree.varlen import check_chunk_indices, check_cu_seqlens_tensor, check_offsets

__all__ = ["chunk_gated_delta_rule", "gdn_decay"]


# Host-side (validation, one read of the offsets, dispatch): never traced by torch.compile, which
# compiles the compute the backends call on its own (torch_backend._chunked, FLA's kernels).
@torch.compiler.disable(recursive=False)
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | Sequence[int] | None = None,
    chunk_indices: torch.Tensor | None = None,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over packed documents; the state never crosses a document boundary.

    Per document, with S [HV, K, V] starting at its initial state (or zeros), for each token t:
        S = exp(g_t) S;  S = S + k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T (scale q_t)
    Value head hv reads query/key head hv // (HV // H).

    Args:
        q, k: [B, T, H, K]. v: [B, T, HV, V], same dtype as q and k.
        g: [B, T, HV], log decay (<= 0). beta: [B, T, HV]. Any float dtype (g is often fp32).
        scale: multiplies q; default K ** -0.5.
        initial_state: [N, HV, K, V], or None for zeros.
        output_final_state: also return each document's final state.
        use_qk_l2norm_in_kernel: l2-normalise q and k first (x * rsqrt(sum x^2 + 1e-6), in fp32).
        cu_seqlens: [N + 1] integer offsets of the documents in a single packed row (B == 1).
        cu_seqlens_cpu: optional host copy of cu_seqlens (as in FLA; a CPU tensor, or a sequence of
            ints such as PackedBatch.cu_seqlens_host); spares the one device-to-host read of the
            offsets. It is trusted to equal cu_seqlens.
        chunk_indices: FLA's [NT, 2] table of (document, 64-token chunk) for cu_seqlens, as in FLA;
            backend "fla" only. Given without cu_seqlens_cpu, the offsets are trusted and never read
            on the host, and empty documents may end the row: what a CUDA graph needs
            (padfree.cuda_graph builds both from offsets it validated).
        use_gate_in_kernel, A_log, dt_bias: as in FLA, `g` is then the raw gate input a [B, T, HV] and
            the log decay is computed inside the op, in fp32, as Gated DeltaNet defines it:
            g = -exp(A_log) * softplus(a + dt_bias), A_log and dt_bias [HV] (dt_bias may be None).
            On FLA this fuses ~17 small ops per layer (and their backward) into its kernels.
        use_beta_sigmoid_in_kernel: `beta` is then the raw logit b and beta = sigmoid(b) (as FLA).
        backend: "auto" (FLA on a CUDA device where it is safe, else "torch"), "torch", "fla",
            or "naive" (the slow per-token oracle).
    Returns:
        o [B, T, HV, V] in q's dtype, and final_state [N, HV, K, V] in fp32 (or None).

    Arguments after `output_final_state` are keyword-only: FLA 0.6 and older FLA releases put
    `use_qk_l2norm_in_kernel` and `cu_seqlens` at different positions.

    Example:
        >>> q = k = torch.nn.functional.normalize(torch.randn(1, 10, 2, 16), dim=-1)
        >>> v = torch.randn(1, 10, 4, 16)
        >>> g, beta = -torch.rand(1, 10, 4), torch.rand(1, 10, 4)
        >>> cu_seqlens = torch.tensor([0, 3, 10], dtype=torch.int32)
        >>> o, ht = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True,
        ...                                cu_seqlens=cu_seqlens, backend="torch")
        >>> o.shape, ht.shape
        (torch.Size([1, 10, 4, 16]), torch.Size([2, 4, 16, 16]))
    """
    name = resolve_backend(backend, q.device)
    if chunk_indices is not None:
        check_chunk_indices(chunk_indices, cu_seqlens, name)
    offsets = _validate(q, k, v, g, beta, initial_state, cu_seqlens, cu_seqlens_cpu, chunk_indices)
    _check_gate(g, use_gate_in_kernel, A_log, dt_bias)  # the raw a and b have g's and beta's shapes
    if name != "fla":  # FLA fuses these; the other backends take the decay and beta as usual
        if use_gate_in_kernel:
            g = gdn_decay(g, A_log, dt_bias)
        if use_beta_sigmoid_in_kernel:
            beta = beta.sigmoid()
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if name == "torch":
        return torch_backend.chunk_gated_delta_rule(
            q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, offsets
        )
    elif name == "fla":
        return fla_backend.chunk_gated_delta_rule(
            q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens, offsets,
            chunk_indices, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
        )
    elif name == "naive":
        return naive.chunk_gated_delta_rule(
            q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, offsets
        )
    else:
        raise ValueError(f"backend {name!r} has no gated delta rule implementation.")


def gdn_decay(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None) -> torch.Tensor:
    """Gated DeltaNet's log decay from its raw gate input, in fp32 (in half precision exp(A_log) can
    overflow): -exp(A_log) * softplus(a + dt_bias), as transformers' Qwen3.5 layer computes it."""
    a = a.float() if dt_bias is None else a.float() + dt_bias
    return -A_log.float().exp() * torch.nn.functional.softplus(a)


def _check_gate(a, use_gate_in_kernel: bool, A_log, dt_bias) -> None:
    if not use_gate_in_kernel:
        if A_log is not None or dt_bias is not None:
            raise ValueError("A_log / dt_bias were given without use_gate_in_kernel=True; pass it, or drop them.")
        return
    HV = a.shape[-1]
    if A_log is None:
        raise ValueError("use_gate_in_kernel=True needs A_log [HV] (the layer's A_log): g is then the raw gate input.")
    for name, x in (("A_log", A_log), ("dt_bias", dt_bias)):
        if x is not None and (tuple(x.shape) != (HV,) or not x.is_floating_point() or x.device != a.device):
            raise ValueError(
                f"{name} must be a float tensor of shape [HV] = [{HV}] on {a.device}, got {x.dtype} of shape "
                f"{tuple(x.shape)} on {x.device}."
            )


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


@torch.compiler.disable
def _validate(
    q, k, v, g, beta, initial_state, cu_seqlens, cu_seqlens_cpu, chunk_indices=None
) -> tuple[int, ...] | None:
    """Check every shape, dtype and offset; return the offsets as host ints (None when unpacked, or when
    trusted: chunk_indices without a host copy)."""
    if q.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q must be [B, T, H, K] and v [B, T, HV, V], got q {_shape(q)} and v {_shape(v)}; "
            "reshape the heads out of the hidden dim first."
        )
    B, T, H, K = q.shape
    HV = v.shape[2]
    if k.shape != q.shape:
        raise ValueError(f"k {_shape(k)} must have q's shape {_shape(q)} ([B, T, H, K]).")
    if v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v {_shape(v)} must share q's batch and length {(B, T)}.")
    if HV % H:
        raise ValueError(
            f"v has HV={HV} heads, not a multiple of q/k's H={H}; grouped value heads need HV = H * group."
        )
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, HV):
            raise ValueError(f"{name} {_shape(x)} must be [B, T, HV] = {(B, T, HV)}.")
    if T == 0:
        raise ValueError("the sequence is empty (T=0); call the op only on rows with tokens.")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(
            f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them together "
            "(g and beta may stay fp32)."
        )
    for name, x in (("g", g), ("beta", beta)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {x.dtype}.")
    tensors = {"k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state, "cu_seqlens": cu_seqlens}
    for name, x in tensors.items():
        if x is not None and x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; move it to {q.device}.")

    offsets = None
    if cu_seqlens is not None and (chunk_indices is None or cu_seqlens_cpu is not None):
        offsets = _check_cu_seqlens(cu_seqlens, cu_seqlens_cpu, B, T)
    elif cu_seqlens is not None:  # trusted offsets (see chunk_indices): shapes only, no host read
        if B != 1:
            raise ValueError(f"cu_seqlens needs one packed row (B=1), got B={B}.")
        check_cu_seqlens_tensor(cu_seqlens)
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    if initial_state is not None:
        want = (N, HV, K, v.shape[3])
        if initial_state.shape != want:
            raise ValueError(
                f"initial_state {_shape(initial_state)} must be [N, HV, K, V] = {want}, one state per "
                f"{'document (len(cu_seqlens) - 1)' if cu_seqlens is not None else 'batch row'}."
            )
        if not initial_state.is_floating_point():
            raise ValueError(f"initial_state must be a float tensor, got {initial_state.dtype}.")
    return offsets


def _check_cu_seqlens(cu_seqlens, cu_seqlens_cpu, B: int, T: int) -> tuple[int, ...]:
    if B != 1:
        raise ValueError(
            f"cu_seqlens needs one packed row (B=1), got B={B}; flatten the batch to [1, B * T, ...] "
            "and offset cu_seqlens, or pass cu_seqlens=None for B independent sequences."
        )
    tensors = [("cu_seqlens", cu_seqlens)]
    if isinstance(cu_seqlens_cpu, torch.Tensor):  # else None, or host ints (PackedBatch.cu_seqlens_host)
        tensors.append(("cu_seqlens_cpu", cu_seqlens_cpu))
    for name, x in tensors:
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers (int32 or int64), got {x.dtype}.")
        if x.dim() != 1 or x.numel() < 2:
            raise ValueError(f"{name} must be 1-D with at least 2 offsets ([N + 1]), got shape {_shape(x)}.")
    # The one host read of the offsets (none when the caller passed a host copy).
    source = cu_seqlens if cu_seqlens_cpu is None else cu_seqlens_cpu
    offsets = tuple(int(o) for o in (source.tolist() if isinstance(source, torch.Tensor) else source))
    if len(offsets) != cu_seqlens.numel():
        raise ValueError(f"cu_seqlens_cpu has {len(offsets)} offsets but cu_seqlens has {cu_seqlens.numel()}.")
    check_offsets(offsets, T)
    return offsets
