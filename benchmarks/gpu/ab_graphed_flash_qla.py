"""padfree's CUDA-graph training step with the gated delta rule on FLA's own kernels against FlashQLA's (through
padfree's device-side plan, padfree.ops.gated_delta.fla_backend), alternating in one process on the same rows.

    python3 benchmarks/gpu/ab_graphed_flash_qla.py --shape 0.8b --median-len 600 --rounds 2 --json out.json

Each measurement is `padfree bench`'s padfree_graphed path (padfree.bench.train_step.measure: a fresh model with the
same seed, fused capturable AdamW, no checkpointing, warm-up steps then the captured step replayed on the timed rows);
FLA_FLASH_QLA=0 or 1 is set before it (FLA and padfree read it per call, and the capture records the choice).
--median-len picks the documents: 600 is the bench's workload (~80 documents per 8,192-token row); a long median
packs rows of a few long documents, where FlashQLA without its context parallelism was slower than FLA
(nineteenth session, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from padfree.bench.shapes import shape_config
from padfree.bench.train_step import make_workload, measure

SETTINGS = {"fla_own": "0", "flash_qla": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.8b")
    parser.add_argument("--row-tokens", type=int, default=8192)
    parser.add_argument("--median-len", type=float, default=600)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    config = shape_config(args.shape)
    workload = make_workload(config.vocab_size, args.row_tokens, args.steps, args.warmup, args.median_len, seed=0)
    docs = [len(row) for row in workload.rows[args.warmup :]]
    print(f"{args.shape}, {args.row_tokens} tokens per row, median length {args.median_len:g}: documents per timed row "
          f"{docs}", flush=True)  # fmt: skip
    results = []
    for round_index in range(args.rounds):
        for name, flag in SETTINGS.items():
            os.environ["FLA_FLASH_QLA"] = flag
            result = measure("padfree_graphed", config, workload, device, torch.bfloat16, False, seed=0)
            result.update(setting=name, round=round_index, documents_per_row=docs)
            results.append(result)
            print(f"  round {round_index + 1}, {name}: {result['real_tokens_per_s']:,.0f} tok/s, MFU "
                  f"{result['mfu']:.1%}, GPU busy {result['gpu_busy']:.0%}, peak {result['peak_mem_gib']:.2f} GiB, "
                  f"final loss {result['final_loss']:.4f}", flush=True)  # fmt: skip
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"args": vars(args), "results": results}, f, indent=1)
    for name in SETTINGS:
        speeds = [r["real_tokens_per_s"] for r in results if r["setting"] == name]
        print(f"{name}: best {max(speeds):,.0f} tok/s over {len(speeds)} rounds")
    best = {name: max(r["real_tokens_per_s"] for r in results if r["setting"] == name) for name in SETTINGS}
    print(f"flash_qla / fla_own: {best['flash_qla'] / best['fla_own']:.3f}")


if __name__ == "__main__":
    main()
