#!/usr/bin/env bash
# GPU batch BR (1 GPU), nineteenth session: FlashQLA (flash_qla 0.1.3, in .gpu-b) against FLA's kernels for the
# gated delta rule at the bench's layer shapes; then the conv kernels' GPU tests in full (owed since the
# eighteenth session's looped dz kernel and tile split).
#   RESULTS=/tmp/resBR BUDGET_S=540 bash benchmarks/gpu/batch_br.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
python3 -c "import flash_qla, tilelang; print('flash_qla', flash_qla.__version__, 'tilelang', tilelang.__version__)" >> "$RESULTS/versions.txt" 2>&1
timed gdn_backends 240 python3 benchmarks/gpu/bench_gdn_backends.py --json "$RESULTS/gdn_backends.json"
timed conv_tests 260 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
