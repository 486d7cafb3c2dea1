"""A/B in one process: the Gated DeltaNet conv writing q, k, v as three tensors (split_sizes, the library's path)
against one output cut by torch.split (the path before it), each in its own captured training step.

    python3 benchmarks/gpu/ab_conv_split.py --shape 0.8b --row-tokens 8192 --json out.json

Both steps train one model with one optimizer (capturable fused AdamW, bf16, no checkpointing) on the same rows;
"whole" runs with padfree.models.layers.causal_conv1d replaced by a wrapper that drops split_sizes and returns
torch.split views of the whole output, as gdn_gate_inputs did before (FLA then copies the strided q, k, v, and
autograd concatenates their gradients). A replay runs what its capture recorded, so the replacement only has to
be in place while that step is eager or capturing; it stays in place for all of that step's calls anyway. The
variants alternate in rounds (a drifting clock moves both); per variant, the median step over all rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

import padfree
import padfree.models.layers as layers
from benchmarks.bench_sequence_parallel import VOCAB, build, make_row  # the repository root on PYTHONPATH
from padfree.cuda_graph import CudaGraphTrainStep


@contextlib.contextmanager
def whole_conv_output():
    library = layers.causal_conv1d

    def whole(*args, split_sizes=None, **kwargs):
        y = library(*args, **kwargs)
        return y if split_sizes is None else torch.split(y, list(split_sizes), dim=-1)

    layers.causal_conv1d = whole
    try:
        yield
    finally:
        layers.causal_conv1d = library


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.8b")
    parser.add_argument("--row-tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda")
    model = padfree.patch(build(args.shape, torch.bfloat16, device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True, capturable=True)
    rows = [make_row(args.row_tokens, VOCAB[args.shape], seed=20 + i) for i in range(args.steps + 2)]
    max_docs = max(r["cu_seq_lens_q"].numel() - 1 for r in rows) + 4
    variants = {"split": contextlib.nullcontext, "whole": whole_conv_output}
    steps = {name: CudaGraphTrainStep(model, optimizer, args.row_tokens, max_docs) for name in variants}
    times = {name: [] for name in variants}
    for name, context in variants.items():  # eager step, then capture
        with context():
            steps[name](rows[0]), steps[name](rows[1])
    for _ in range(args.rounds):
        for name, context in variants.items():
            with context():
                for row in rows[2:]:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    steps[name](row)
                    torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
        "shape": args.shape, "row_tokens": args.row_tokens,
        "median_step_ms": {k: round(v * 1e3, 2) for k, v in median.items()},
        "tokens_per_s": {k: round(args.row_tokens / v) for k, v in median.items()},
        "split_vs_whole": round(median["whole"] / median["split"], 4),
        "step_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
    }  # fmt: skip
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
