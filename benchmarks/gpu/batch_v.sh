#!/usr/bin/env bash
# GPU batch V (1 GPU, an H100: `nvidia-h100-x1`), ninth session:
#   RESULTS=/tmp/resV BUDGET_S=570 bash benchmarks/gpu/batch_v.sh
# Batch U (H200, one-GPU machine) had upstream's eager norms beat FLA's fused ones at the 0.8B shape
# (the step is host-bound there), while the loss's softmax in FLA's cross-entropy kernels cuts both
# kernels and host ops. patch() now has separate knobs for the two, so this times each against the
# default in one run: fused norms + FLA loss (padfree), eager norms + FLA loss (padfree_eager_norms),
# fused norms + torch loss (padfree_torch_loss), at the 0.8B shape (both checkpointing settings) and
# the norms at the ~4B shape with checkpointing (the H100 needs it there).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_08b_fastest 330 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths upstream_packed,padfree,padfree_eager_norms,padfree_torch_loss --steps 8 --warmup 3 --json "$RESULTS/bench_08b.json"
timed bench_4b_ckpt 240 python3 -m padfree.cli bench --device cuda --shape 4b --gradient-checkpointing --paths padfree,padfree_eager_norms --steps 4 --warmup 2 --json "$RESULTS/bench_4b_ckpt.json"
note done
