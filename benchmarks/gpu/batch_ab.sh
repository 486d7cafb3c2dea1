#!/usr/bin/env bash
# GPU batch AB (1 GPU, an H100), written in the tenth session for the next, after batch AA:
#   RESULTS=/tmp/resAB BUDGET_S=560 bash benchmarks/gpu/batch_ab.sh
# 1. The bench's default paths on CUDA (padfree_graphed added where FLA runs), tiny shape.
# 2. Where the kernel-bound graphed 0.8B step spends its ~136 ms: one replay's kernel table, next to the
#    eager step's (benchmarks/profile_train_step.py --cuda-graph).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_tiny_default 150 python3 -m padfree.cli bench --device cuda --shape tiny --row-tokens 2048 --steps 4 --json "$RESULTS/bench_tiny_default.json"
timed prof_graphed 180 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
timed prof_eager 180 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --out "$RESULTS/prof_eager.txt"
note done
