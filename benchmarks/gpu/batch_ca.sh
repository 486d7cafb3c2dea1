#!/usr/bin/env bash
# GPU runs CA and CB (1 GPU), twentieth session, typed as single commands on BZ's machine while it was still warm
# (BZ's ~4B bench was cut at its limit by FlashQLA's first compiles for the 16/32-head shape, after upstream's
# path; its kernels then sat in the machine's cache). Recorded here as they ran: the ~4B comparison with
# flash_qla installed (CA), then with FLA_FLASH_QLA=0 (CB), one process each, checkpointing on for both.
set -u
source benchmarks/gpu/common.sh
B="python3 -m padfree.cli bench --device cuda --shape 4b --gradient-checkpointing --paths upstream_packed,padfree_graphed --steps 6 --warmup 2"
timeout 430 $B --json "$RESULTS/bench_4b_flash_qla.json" > "$RESULTS/bench_4b_flash_qla.log" 2>&1   # CA
timeout 300 env FLA_FLASH_QLA=0 $B --json "$RESULTS/bench_4b_fla_own.json" > "$RESULTS/bench_4b_fla_own.log" 2>&1   # CB
