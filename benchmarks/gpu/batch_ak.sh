#!/usr/bin/env bash
# GPU batch AK (1 GPU, an H100), written in the eleventh session for the next:
#   RESULTS=/tmp/resAK BUDGET_S=560 bash benchmarks/gpu/batch_ak.sh
# 1. Name the ~15 ms of small aten kernels in the 0.8b step: the eager step's ops by input shape (the graphed
#    step runs the same kernels, but a replay has no ops to name them by).
# 2. The ~4B graphed step without checkpointing: it fitted (61.7 GiB) when upstream's paths ran first in the
#    same process (tenth session, Y) and did not when it ran alone (eleventh, AI). Both orders, one process each.
# 3. The conv kernels' tests and micro-bench again (fresh machine: compile and autotune are in the wall time).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed prof_eager_shapes 120 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --shapes --out "$RESULTS/prof_eager_shapes.txt"
timed bench_4b_upstream_first 150 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_upstream_first.json"
timed bench_4b_graphed_first 100 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths padfree_graphed,upstream_packed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_graphed_first.json"
timed conv_tests 180 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
note done
