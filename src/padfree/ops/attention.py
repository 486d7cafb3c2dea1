"""Varlen causal attention over a packed row: each document attends to itself only.

Legend: T tokens of the packed row, H query heads, HKV key/value heads (H a multiple of HKV:
grouped-query attention, query head h reads key/value head h // (H // HKV)), D head dim,
N documents, Ld one document's length.

Backends (a plain `backend=` argument):
  "varlen_attn"   PyTorch's own `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 inside
                  PyTorch): CUDA, fp16/bf16, head dim <= 256.
  "flash_attn"    `flash_attn_varlen_func` of flash-attn 2 (or 3, when only that is installed).
  "sdpa_per_doc"  exact fallback on any device and dtype: `F.scaled_dot_product_attention` per
                  group of equal-length documents; costs sum(Ld^2), never T^2.
  "auto"          varlen_attn on CUDA with fp16/bf16, else flash_attn if installed, else sdpa_per_doc.

Keys may run further back than queries (`cu_seqlens_k`): context parallelism gives a rank the
queries of a document's tail and the keys from the document's start. Causality is then aligned to
the bottom right, as in flash-attn: query i of a document with Lq queries and Lk keys sees keys
0 .. Lk - Lq + i.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import torch
import torch.nn.functional as F

from padfree.varlen import check_cu_seqlens_tensor, check_offsets

__all__ = ["BACKENDS", "resolve_attention_backend", "varlen_attention"]

BACKENDS = ("auto", "varlen_attn", "flash_attn", "sdpa_per_doc")
_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_FLASH_MAX_HEAD_DIM = 256


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    backend: str = "auto",
    cu_seqlens_host: tuple[int, ...] | None = None,
    *,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
    cu_seqlens_k_host: tuple[int, ...] | None = None,
    trust_offsets: bool = False,
) -> torch.Tensor:
    """Causal attention within each document of a packed row; documents never see each other.

    Args:
        q: [T, H, D]; k, v: [T, HKV, D], all of one dtype and device.
        cu_seqlens: [N + 1] integer offsets on q's device, 0 = cu[0] < ... < cu[N] = T.
        max_seqlen: length of the longest document (the flash kernels size their grid with it).
        scale: softmax scale; None means D ** -0.5.
        backend: one of BACKENDS.
        cu_seqlens_host: the offsets as Python ints (`PackedBatch.cu_seqlens_host`); with it the
            checks and "sdpa_per_doc" need no device-to-host copy.
        cu_seqlens_k, max_seqlen_k, cu_seqlens_k_host: the keys' own offsets (k, v are then
            [Tk, HKV, D]), each document with at least as many keys as queries, causal aligned to
            the bottom right (see the module docstring). Default: the queries' offsets.
        trust_offsets: skip the checks of the offsets' values (their shapes are still checked): no
            device-to-host read, as a CUDA graph needs, and empty documents may end the row. For
            callers that validated them already (padfree.cuda_graph, on the host). Flash backends only.

    Returns:
        [T, H, D] in q's dtype.

    Example:
        >>> q, k, v = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
        >>> cu = torch.tensor([0, 3, 7], dtype=torch.int32)
        >>> varlen_attention(q, k, v, cu, max_seqlen=4, backend="sdpa_per_doc").shape
        torch.Size([7, 4, 8])
    """
    if cu_seqlens_k is None:
        if max_seqlen_k is not None or cu_seqlens_k_host is not None:
            raise ValueError("max_seqlen_k / cu_seqlens_k_host were given without cu_seqlens_k; pass all three.")
        cu_seqlens_k, max_seqlen_k, cu_seqlens_k_host = cu_seqlens, max_seqlen, cu_seqlens_host
    offsets, offsets_k = _check_inputs(
        q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, cu_seqlens_k, max_seqlen_k, cu_seqlens_k_host, trust_offsets
    )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    kind = resolve_attention_backend(backend, q)
    if trust_offsets and kind == "sdpa_per_doc":
        raise ValueError(
            "trust_offsets=True needs a flash backend (CUDA, fp16/bf16): sdpa_per_doc slices the documents on the host."
        )
    cu = (cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k)
    if kind == "varlen_attn":
        return _varlen_attn(q, k, v, *cu, scale)
    elif kind == "flash_attn":
        return _flash_attn(q, k, v, *cu, scale)
    elif kind == "sdpa_per_doc":
        if offsets is None:
            offsets = tuple(cu_seqlens.tolist())
        if offsets_k is None:
            offsets_k = tuple(cu_seqlens_k.tolist())
        return _sdpa_per_doc(q, k, v, offsets, offsets_k, scale)
    else:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; pass one of those.")


def _check_inputs(
    q, k, v, cu_seqlens, max_seqlen, cu_seqlens_host, cu_seqlens_k, max_seqlen_k, cu_seqlens_k_host, trusted=False
) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Raise ValueError on inputs any backend would misread; return the host offsets (q, k) if known."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v must be [T, H, D] (no batch dim), got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}; pass q[0] for a packed [1, T, H, D] row."
        )
    T, H, D = q.shape
    if k.shape != v.shape or k.shape[2] != D:
        raise ValueError(
            f"k and v must both be [Tk, HKV, D] = [Tk, HKV, {D}] for q of shape {tuple(q.shape)}, "
            f"got k {tuple(k.shape)} and v {tuple(v.shape)}."
        )
    if cu_seqlens_k is cu_seqlens and k.shape[0] != T:
        raise ValueError(
            f"k and v must both be [T, HKV, D] = [{T}, HKV, {D}] for q of shape {tuple(q.shape)}, got k "
            f"{tuple(k.shape)}; pass cu_seqlens_k for keys of other lengths."
        )
    HKV = k.shape[1]
    if HKV == 0 or H % HKV != 0:
        raise ValueError(
            f"q has H = {H} heads, not a multiple of k/v's HKV = {HKV}; grouped-query attention needs "
            "H % HKV == 0 (check num_attention_heads and num_key_value_heads)."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one dtype.")
    if not (q.device == k.device == v.device == cu_seqlens.device == cu_seqlens_k.device):
        raise ValueError(
            f"q, k, v, cu_seqlens, cu_seqlens_k are on {q.device}, {k.device}, {v.device}, {cu_seqlens.device}, "
            f"{cu_seqlens_k.device}; move them to one device."
        )
    check_cu_seqlens_tensor(cu_seqlens)
    check_cu_seqlens_tensor(cu_seqlens_k)
    if cu_seqlens_k.numel() != cu_seqlens.numel():
        raise ValueError(
            f"cu_seqlens_k has {cu_seqlens_k.numel()} offsets but cu_seqlens has {cu_seqlens.numel()}; "
            "queries and keys must describe the same documents."
        )
    found = []
    for name, cu, host, max_len, rows in (
        ("", cu_seqlens, cu_seqlens_host, max_seqlen, T),
        ("_k", cu_seqlens_k, cu_seqlens_k_host, max_seqlen_k, k.shape[0]),
    ):
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_seqlen{name} must be a positive int (the longest document's length), got {max_len!r}.")
        if host is not None:
            offsets = tuple(int(o) for o in host)
            if len(offsets) != cu.numel():
                raise ValueError(f"cu_seqlens{name}_host has {len(offsets)} offsets but cu_seqlens{name} has {cu.numel()}.")
        elif trusted or torch.compiler.is_compiling():
            # values are trusted when the caller says so (a CUDA graph) and inside a compiled graph: checking them
            # would sync and break either graph
            found.append(None)
            continue
        else:
            offsets = tuple(cu.tolist())
        check_offsets(offsets, rows, row_name="q" if not name else "k")
        longest = max(b - a for a, b in zip(offsets, offsets[1:]))
        if max_len < longest:
            raise ValueError(
                f"max_seqlen{name} = {max_len} is shorter than the longest document ({longest} tokens); flash "
                "kernels would skip its tail. Pass PackedBatch.max_seqlen."
            )
        found.append(offsets)
    offsets_q, offsets_k = found
    if offsets_q is not None and offsets_k is not None:
        for i, (a, b, ak, bk) in enumerate(zip(offsets_q, offsets_q[1:], offsets_k, offsets_k[1:])):
            if bk - ak < b - a:
                raise ValueError(
                    f"document {i} has {b - a} queries but only {bk - ak} keys; with bottom-right causality every "
                    "query needs its own key, so each document needs at least as many keys as queries."
                )
    return offsets_q, offsets_k


def resolve_attention_backend(backend: str, q: torch.Tensor) -> str:
    """The concrete backend for `backend` and q's device/dtype; explicit choices that cannot run raise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}; pass one of those.")
    if backend == "sdpa_per_doc":
        return backend
    flash_ok = q.is_cuda and q.dtype in _FLASH_DTYPES and q.shape[-1] <= _FLASH_MAX_HEAD_DIM
    if backend == "auto":
        if flash_ok and _torch_varlen_attn() is not None:
            return "varlen_attn"
        if flash_ok and _flash_attn_varlen_func() is not None:
            return "flash_attn"
        return "sdpa_per_doc"
    if not flash_ok:
        raise ValueError(
            f"backend={backend!r} needs CUDA tensors in fp16/bf16 with head dim <= {_FLASH_MAX_HEAD_DIM}, got "
            f"{q.dtype} on {q.device} with head dim {q.shape[-1]}; use backend='sdpa_per_doc' (any device/dtype)."
        )
    if backend == "varlen_attn" and _torch_varlen_attn() is None:
        raise ValueError(
            f"backend='varlen_attn' needs torch.nn.attention.varlen (PyTorch >= 2.10), this is {torch.__version__}; "
            "upgrade torch or use backend='flash_attn' / 'sdpa_per_doc'."
        )
    if backend == "flash_attn" and _flash_attn_varlen_func() is None:
        raise ValueError("backend='flash_attn' needs flash-attn: pip install flash-attn --no-build-isolation.")
    return backend


@functools.cache
def _torch_varlen_attn():
    """(varlen_attn, its parameter names), or None on a PyTorch without it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


@functools.cache
def _flash_attn_varlen_func():
    """flash-attn 2's `flash_attn_varlen_func`, else flash-attn 3's (Hopper build), else None."""
    for module in ("flash_attn", "flash_attn_interface"):
        try:
            return importlib.import_module(module).flash_attn_varlen_func
        except (ImportError, AttributeError):
            continue
    return None


def _varlen_attn(q, k, v, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k, scale):
    varlen_attn, params = _torch_varlen_attn()
    H, HKV, D = q.shape[1], k.shape[1], q.shape[2]
    kwargs = {}
    # Its signature moved between releases: torch 2.10/2.11 take is_causal=; later ones spell causal
    # as window_size=(-1, 0) (compared to that tuple, so a list would silently mean non-causal).
    if "is_causal" in params:
        kwargs["is_causal"] = True
    elif "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        raise RuntimeError(f"torch {torch.__version__}: varlen_attn takes neither is_causal nor window_size.")
    if "scale" in params:
        kwargs["scale"] = scale
    elif scale != D**-0.5:
        q = q * (scale * D**0.5)  # the kernel applies D ** -0.5; fold the rest into q
    if H != HKV:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # repeat each key/value head for its group of query heads, as repeat_kv does
            k = k.repeat_interleave(H // HKV, dim=1)
            v = v.repeat_interleave(H // HKV, dim=1)
    # FlashAttention-2 aligns causality to the bottom right when a document has more keys than queries.
    cu_q, cu_k = cu_seqlens.to(torch.int32), cu_seqlens_k.to(torch.int32)
    return varlen_attn(q, k, v, cu_q, cu_k, max_seqlen, max_seqlen_k, **kwargs)


def _flash_attn(q, k, v, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k, scale):
    out = _flash_attn_varlen_func()(
        q, k, v, cu_seqlens_q=cu_seqlens.to(torch.int32), cu_seqlens_k=cu_seqlens_k.to(torch.int32),
        max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen_k, softmax_scale=scale, causal=True,
    )  # fmt: skip
    return out[0] if isinstance(out, tuple) else out  # some flash-attn 3 releases also return the LSE


def _sdpa_per_doc(q, k, v, offsets: tuple[int, ...], offsets_k: tuple[int, ...], scale: float) -> torch.Tensor:
    """Exact attention per document; documents of equal (query, key) lengths share one batched SDPA call."""
    H, HKV = q.shape[1], k.shape[1]
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for start, end, start_k, end_k in zip(offsets, offsets[1:], offsets_k, offsets_k[1:]):
        groups.setdefault((end - start, end_k - start_k), []).append((start, start_k))
    pieces: dict[int, torch.Tensor] = {}
    for (Lq, Lk), starts in groups.items():
        idx_q = torch.tensor([s for s, _ in starts], device=q.device)[:, None] + torch.arange(Lq, device=q.device)
        idx_k = torch.tensor([s for _, s in starts], device=q.device)[:, None] + torch.arange(Lk, device=q.device)
        q_nHLD, k_nHLD, v_nHLD = (t[i].transpose(1, 2) for t, i in ((q, idx_q), (k, idx_k), (v, idx_k)))
        # SDPA's is_causal aligns to the top left; with more keys than queries give the bottom-right mask.
        mask = None if Lq == Lk else torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
        o_nHLD = F.scaled_dot_product_attention(
            q_nHLD, k_nHLD, v_nHLD, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=H != HKV,
        )  # fmt: skip
        for (start, _), o_LHD in zip(starts, o_nHLD.transpose(1, 2).unbind(0)):
            pieces[start] = o_LHD
    return torch.cat([pieces[start] for start in offsets[:-1]], dim=0)
