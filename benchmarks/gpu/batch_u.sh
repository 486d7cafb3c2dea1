#!/usr/bin/env bash
# GPU batch U (1 GPU, an H200: `nvidia-h200`), ninth session:
#   RESULTS=/tmp/resU BUDGET_S=560 bash benchmarks/gpu/batch_u.sh
# The loss's softmax in FLA's cross-entropy kernels, on the H200 machine, whose host ran FLA's
# wrappers about twice as fast as the H100 machine's in the eighth session: the 0.8B shape at each
# path's fastest (checkpointing on and off) and the ~4B shape without checkpointing (fits the H200's
# 139 GiB for upstream too), the eighth session's batches O and P repeated on the new code.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_08b_fastest 280 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths upstream_packed,padfree_eager_norms,padfree --steps 8 --warmup 3 --json "$RESULTS/bench_08b.json"
timed bench_4b_nockpt 230 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths upstream_packed,padfree --steps 4 --warmup 2 --json "$RESULTS/bench_4b_nockpt.json"
timed prof_nockpt 40 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --backend fla --warmup 6 --out "$RESULTS/prof_nockpt.txt"
note done
