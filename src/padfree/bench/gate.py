"""The correctness gate `padfree bench` passes before it times anything.

On the document lengths of one benchmark row (the one with the most documents), with the benchmark's
shape, device and dtype:
    padfree          `padfree.check`'s comparison: the patched model's packed row against the unpatched
                     model run on each document alone; the max RMS-relative logits error must stay within
                     the bound below, else the bench stops (exit 1). Run once per padfree path the
                     bench times, with that path's patch settings (`padfree_compiled`: compiled norms).
    upstream packed  the same comparison with the model left unpatched (transformers' cu_seq_lens_* path):
                     its refusal, or its error, flagged as mixing documents above the same bound. It only
                     labels upstream's numbers; it never stops the bench.

The bound is check's (padfree.check.error_bound): the dtype's (fp32 1e-4, bf16 2e-2), raised to 3x
upstream's own rounding error where that is larger: the unpatched model in bf16 vs the same weights in
fp32, per document. Deep shapes need it: at 0.8b, bf16 alone moves the logits by ~5e-2 (measured on
CPU), above the fixed 2e-2.
Measured on CPU, documents [70, 1, 17, 3, 40]: 0.8b bf16 passes at 4.9e-2 (bound 1.4e-1) while a
recurrence that ignores boundaries gives 1.4; tiny bf16 8.3e-2 (bound 2.3e-1) vs 4.6e-1.
"""

from __future__ import annotations

import copy
import gc

import torch

import padfree
from padfree.bench.train_step import GRAPHED_PATHS, Workload
from padfree.check import documents, error_bound, packed_vs_per_document, rms_relative_error

GATE_SPARE_DOCS = 3  # empty documents after the real ones in a graphed path's gate row


def gate_lengths(workload: Workload) -> list[int]:
    """Document lengths of the benchmark row with the most documents (the most boundaries to leak over)."""
    row = max(workload.rows, key=len)
    if len(row) < 2:
        raise ValueError(
            f"every benchmark row holds a single document, so the correctness gate would test no boundary; "
            f"lower --median-len or raise --row-tokens (now {workload.row_tokens})."
        )
    return [len(workload.samples[i]) for i in row]


@torch.no_grad()
def _upstream_packed(model, docs: list[torch.Tensor], device: torch.device, bound: float) -> dict:
    batch = padfree.collate([{"input_ids": d} for d in docs])
    batch.pop("labels")
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    try:
        packed = model(**batch).logits[0].float()
    except Exception as error:  # upstream's own refusal (e.g. no FLA on CPU) is a result, not a crash
        return {"refused": f"{type(error).__name__}: {error}", "max_error": None, "mixes_documents": None}
    reference = [model(input_ids=d[None].to(device)).logits[0].float() for d in docs]
    if not torch.isfinite(packed).all():
        worst = float("inf")
    else:
        worst = max(rms_relative_error(r, p) for r, p in zip(reference, packed.split([len(d) for d in docs])))
    return {"refused": None, "max_error": worst, "mixes_documents": worst > bound}


def correctness_gate(
    config, lengths: list[int], device: torch.device, dtype: torch.dtype, seed: int, init_std: float,
    patches: dict[str, dict] | None = None,
) -> dict:
    """Both comparisons on a fresh model of `config` (weights drawn with std `init_std`). `patches`: the
    padfree paths to check, each with its padfree.patch settings (default: "padfree" alone); `passed`
    and `max_error` cover all of them, `errors` gives each path's."""
    from transformers import Qwen3_5ForCausalLM

    gate_config = copy.deepcopy(config)
    gate_config.initializer_range = init_std
    torch.manual_seed(seed)
    with torch.device(device):  # drawn on the device, as padfree.bench.train_step.build_model
        model = Qwen3_5ForCausalLM(gate_config)
    model = model.to(dtype=dtype).eval()
    docs = documents(config.vocab_size, lengths)
    try:
        bound, why, rounding = error_bound(model, lengths, device, dtype)
        # A graphed path runs its rows as fixed-shape rows (padfree.static_row.StaticRow): gate that form, with
        # spare document slots so the empty padding documents are in the row.
        errors = {path: max(packed_vs_per_document(
                      model, lengths, device,
                      static_max_docs=len(lengths) + GATE_SPARE_DOCS if path in GRAPHED_PATHS else None, **settings))
                  for path, settings in (patches or {"padfree": {}}).items()}  # fmt: skip
        upstream = _upstream_packed(model, docs, device, bound)
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    worst = max(errors.values())
    return {"lengths": lengths, "init_std": init_std, "max_error": worst, "errors": errors, "bound": bound,
            "bound_reason": why, "rounding_error": rounding, "passed": worst <= bound, "upstream_packed": upstream}  # fmt: skip
