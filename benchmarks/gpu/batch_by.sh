#!/usr/bin/env bash
# GPU batch BY (1 GPU), twentieth session, after BX (where upstream's packed path with FlashQLA ran at 506 tokens/s:
# FlashQLA's TileLang compiles per row inside its timing): issue #7's 0.8b comparison with flash_qla installed
# again, now that the bench runs every timed packed row once before timing an eager path (untimed_first).
#   RESULTS=/tmp/resBY BUDGET_S=560 bash benchmarks/gpu/batch_by.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
B="python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 8 --warmup 3"
timed bench_flash_qla 500 $B --json "$RESULTS/bench_flash_qla.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
