#!/usr/bin/env bash
# GPU batch AF (1 GPU, an H100), eleventh session, after batch AD/AE: padfree's conv backward split into two
# memory-bound kernels (the fused one ran no faster than FLA's in the 0.8b step: 58,226 vs 58,131 tokens/s).
#   RESULTS=/tmp/resAF BUDGET_S=570 bash benchmarks/gpu/batch_af.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_conv 120 python3 benchmarks/gpu/bench_conv.py --json "$RESULTS/bench_conv.json"
timed bench_08b_conv 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --rounds 2 --paths upstream_packed,padfree_graphed,padfree_graphed_fla_conv --steps 8 --warmup 3 --json "$RESULTS/bench_08b_conv.json"
timed conv_tests 240 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
note done
