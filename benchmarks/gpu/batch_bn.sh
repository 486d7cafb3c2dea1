#!/usr/bin/env bash
# GPU batch BN (1 GPU), eighteenth session, after BL/BM: the conv kernels' new tuning spaces and bf16 dz, and the
# fused rotary kernels, tested, then the graphed 0.8b step before (.old-src: commit 386dcef, carried) and after
# on the same machine, then padfree bench with today's code (upstream packed in the same process).
#   RESULTS=/tmp/resBN BUDGET_S=560 bash benchmarks/gpu/batch_bn.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed tests 260 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py tests/gpu/test_cuda_rotary.py tests/gpu/test_cuda_models.py
NEW=$PYTHONPATH
OLD=$PWD/.old-src/src:$PWD:$HOME/gpu-b:$HOME/gpu-a
for round in 1 2; do
  timed prof_graphed_old_$round 90 env PYTHONPATH=$OLD python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_old_$round.txt"
  timed prof_graphed_new_$round 90 env PYTHONPATH=$NEW python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_new_$round.txt"
done
note done
