#!/usr/bin/env bash
# GPU batch Z (1 GPU, an H100: `nvidia-h100-x1`), tenth session, after the graphed step was split into
# accumulate / update (gradient accumulation, autocast, clipping, a scheduled tensor lr) and wired into
# `padfree train --cuda-graph`:
#   RESULTS=/tmp/resZ BUDGET_S=520 bash benchmarks/gpu/batch_z.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed graph_tests 240 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_graph.py tests/gpu/test_cuda_train_graph.py
timed bench_08b_graph 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree,padfree_graphed --steps 8 --warmup 3 --json "$RESULTS/bench_08b_graph.json"
note done
