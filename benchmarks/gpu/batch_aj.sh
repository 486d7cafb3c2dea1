#!/usr/bin/env bash
# GPU batch AJ (1 GPU, an H100), eleventh session: the conv backward's dz kept in x's dtype (bf16) between
# its two passes; the kernels against the oracle, the conv alone, the 0.8b graphed step with it vs FLA's conv.
#   RESULTS=/tmp/resAJ BUDGET_S=480 bash benchmarks/gpu/batch_aj.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed conv_tests 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
timed bench_conv 100 python3 benchmarks/gpu/bench_conv.py --json "$RESULTS/bench_conv.json"
timed bench_08b_conv 170 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --rounds 2 --paths upstream_packed,padfree_graphed,padfree_graphed_fla_conv --steps 8 --warmup 3 --json "$RESULTS/bench_08b_conv.json"
timed prof_graphed 50 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
note done
