#!/usr/bin/env bash
# GPU batch BZ (1 GPU), twentieth session, after BY: issue #7's ~4B comparison with flash_qla installed (FlashQLA on
# both sides; TileLang compiles its kernels for the 16/32-head shape in the warm-up), checkpointing on for both
# (without it neither fits an H100: eleventh session).
#   RESULTS=/tmp/resBZ BUDGET_S=570 bash benchmarks/gpu/batch_bz.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed bench_4b_flash_qla 560 python3 -m padfree.cli bench --device cuda --shape 4b --gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 6 --warmup 2 --json "$RESULTS/bench_4b_flash_qla.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
