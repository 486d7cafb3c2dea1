#!/usr/bin/env bash
# GPU batch BX (1 GPU), twentieth session, after BW: issue #7's 0.8b comparison with flash_qla installed, so that
# FLA hands the gated delta rule to FlashQLA on both sides (upstream's eager packed path: with its context
# parallelism; padfree's graphed step: without it, its plan made on the device); then the same command with
# FLA_FLASH_QLA=0 (FLA's own kernels on both sides, as in the eighteenth session's BO) in a second process.
#   RESULTS=/tmp/resBX BUDGET_S=570 bash benchmarks/gpu/batch_bx.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
B="python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 8 --warmup 3"
timed bench_flash_qla 320 $B --json "$RESULTS/bench_flash_qla.json"
timed bench_fla_own 250 env FLA_FLASH_QLA=0 $B --json "$RESULTS/bench_fla_own.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
