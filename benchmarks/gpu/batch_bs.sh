#!/usr/bin/env bash
# GPU batch BS (1 GPU, the same warm H100 as BR), nineteenth session: bench_gdn_backends.py again, now timing
# GPU kernels (BR timed one call's host overhead, then ran out of time in tilelang's first compiles).
#   RESULTS=/tmp/resBS BUDGET_S=420 bash benchmarks/gpu/batch_bs.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
python3 -c "import flash_qla, tilelang; print('flash_qla', flash_qla.__version__, 'tilelang', tilelang.__version__)" >> "$RESULTS/versions.txt" 2>&1
timed gdn_backends 400 python3 benchmarks/gpu/bench_gdn_backends.py --json "$RESULTS/gdn_backends.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
