#!/usr/bin/env bash
# GPU batch BL (1 GPU, an H100), eighteenth session: back to the one-GPU step (issue #7).
#   RESULTS=/tmp/resBL BUDGET_S=540 bash benchmarks/gpu/batch_bl.sh
# 1. The eager 0.8b step's small aten ops by shape and by caller (the Python line or autograd node), to name the
#    ~15 ms of copies, cats and elementwise kernels the eleventh session's graphed step spent outside the big kernels.
# 2. The graphed step's kernel table with today's code (sessions 12-17 changed the layers for sequence parallelism).
# 3. padfree bench, 0.8b, no checkpointing: upstream packed vs padfree graphed, today's baseline on this GPU.
# The kernel cache is saved twice (a fresh checkout has no seed): after the eager profile and at the end.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed prof_eager_shapes 300 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --shapes --out "$RESULTS/prof_eager_shapes.txt"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
timed prof_graphed 120 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
timed bench_08b 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 8 --warmup 3 --json "$RESULTS/bench_08b.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
