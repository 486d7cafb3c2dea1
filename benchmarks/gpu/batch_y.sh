#!/usr/bin/env bash
# GPU batch Y (1 GPU, an H100: `nvidia-h100-x1`), tenth session, after batch X proved the CUDA-graph step:
#   RESULTS=/tmp/resY BUDGET_S=560 bash benchmarks/gpu/batch_y.sh
# 1. ~4B, each path at its fastest setting that fits an H100 (--fastest): upstream packed vs padfree graphed.
# 2. 0.8B --fastest: upstream packed, padfree, padfree graphed; its peak memory now counts the graph's pool
#    (batch X's 6 GiB missed it: the pool is allocated at capture, before the timed steps).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_4b_fastest 330 python3 -m padfree.cli bench --device cuda --shape 4b --fastest --paths upstream_packed,padfree_graphed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_fastest.json"
timed bench_08b_fastest 220 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths upstream_packed,padfree,padfree_graphed --steps 8 --warmup 3 --json "$RESULTS/bench_08b_fastest.json"
note done
