"""Same-process A/B of the torch gated-delta backend's masked exp on CPU, in the tiny model's training step.

    python benchmarks/ab_cpu_exp_masked.py --rounds 5 --steps 10

"masked_fill": x.masked_fill(~keep, -inf).exp(), the implementation until 2026-11-27 (an out-of-place
masked_fill is a copy plus a fill: two passes over the [chunks, ..., 64, 64] decay matrix before exp).
"where": torch.where(keep, x, -inf).exp(), one pass. Both give the same values and gradients (checked
here on the step's own loss before timing). One model; the rounds alternate the two, fp32, the
bench's workload (2,048-token rows, lognormal lengths).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from padfree.bench.shapes import shape_config
from padfree.bench.train_step import _batches, build_model, make_workload
from padfree.ops.gated_delta import torch_backend

NEG_INF = torch.tensor(-torch.inf)


def masked_fill(x, keep):
    return x.exp() if keep is None else x.masked_fill(~keep, -torch.inf).exp()


def where(x, keep):
    return x.exp() if keep is None else torch.where(keep, x, NEG_INF.to(x.dtype)).exp()


VARIANTS = {"masked_fill": masked_fill, "where": where}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--row-tokens", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = shape_config("tiny")
    workload = make_workload(config.vocab_size, args.row_tokens, args.steps, 2, median_len=300.0, seed=0)
    batches = [b for b, _ in _batches("padfree", workload, workload.rows)]
    model = build_model(config, 0, torch.device("cpu"), torch.float32, checkpointing=False, patch={})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    grads = {}
    for name, fn in VARIANTS.items():  # same loss and gradients before any timing
        torch_backend._exp_masked = fn
        model.zero_grad(set_to_none=True)
        model(**batches[0]).loss.backward()
        grads[name] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    equal = torch.allclose(grads["masked_fill"], grads["where"], rtol=1e-6, atol=1e-9)
    print(f"gradients equal: {equal}", flush=True)
    if not equal:
        raise SystemExit("the variants disagree; not timing them")

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:2]:
        step(batch)
    times = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            torch_backend._exp_masked = VARIANTS[name]
            start = time.perf_counter()
            for batch in batches[2:]:
                step(batch)
            times[name].append((time.perf_counter() - start) / len(batches[2:]) * 1e3)
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.1f} ms" for n in VARIANTS), flush=True)
    torch_backend._exp_masked = masked_fill
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.1f} ms per step ({min(ts):.1f}-{max(ts):.1f})")


if __name__ == "__main__":
    main()
