#!/usr/bin/env bash
# GPU batch BP (1 GPU, an H100), eighteenth session, after BN/BO: padfree's RMSNorm kernels (and the dz kernel
# variants of bench_conv_variants.py --dz-only), tested, then the graphed 0.8b step before (.old-src: commit
# 35bb47b, carried) and after, alternating, on one machine; then padfree bench with today's code.
#   RESULTS=/tmp/resBP BUDGET_S=560 bash benchmarks/gpu/batch_bp.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed tests 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_fused.py tests/gpu/test_cuda_conv_kernel.py
timed dz_variants 120 python3 benchmarks/gpu/bench_conv_variants.py --dz-only --json "$RESULTS/dz_variants.json"
NEW=$PYTHONPATH
OLD=$PWD/.old-src/src:$PWD:$HOME/gpu-b:$HOME/gpu-a
for round in 1 2; do
  timed prof_graphed_old_$round 80 env PYTHONPATH=$OLD python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_old_$round.txt"
  timed prof_graphed_new_$round 80 env PYTHONPATH=$NEW python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_new_$round.txt"
done
note done
