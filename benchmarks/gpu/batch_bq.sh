#!/usr/bin/env bash
# GPU batch BQ (1 GPU, an H100), eighteenth session, after BP, as it ran (typed inline with the last ~230 s of
# device time): the looped dz kernel as the conv's default, the conv GPU tests' oracle and split cases (cut at
# 110 s: 9 passed, none failed), then the graphed 0.8b step after, and before (.old-src: commit 35bb47b, carried;
# cut at its 26 s limit, no result).
#   RESULTS=/tmp/resBQ BUDGET_S=215 bash benchmarks/gpu/batch_bq.sh
set -u
source benchmarks/gpu/common.sh
versions
timed conv_tests 110 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py -k "matches_the_oracle or split"
NEW=$PYTHONPATH
OLD=$PWD/.old-src/src:$PWD:$HOME/gpu-b:$HOME/gpu-a
timed prof_graphed_new_1 60 env PYTHONPATH=$NEW python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_new_1.txt"
timed prof_graphed_old_1 60 env PYTHONPATH=$OLD python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed_old_1.txt"
