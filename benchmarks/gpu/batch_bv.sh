#!/usr/bin/env bash
# GPU batch BV (1 GPU), twentieth session: FlashQLA inside the CUDA-graph step (fixed-shape rows get FlashQLA
# without context parallelism, its plan made on the device). The GDN GPU tests (the captured op replayed on new
# rows vs the fp32 oracle; rows FlashQLA refuses on FLA's own kernels) and the CUDA-graph step tests (now also
# with GDN head dims 128, where FlashQLA runs); then the graphed 0.8b step, FLA's own kernels vs FlashQLA,
# alternating in one process on the bench's rows.
#   RESULTS=/tmp/resBV BUDGET_S=560 bash benchmarks/gpu/batch_bv.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
python3 -c "import flash_qla, tilelang; print('flash_qla', flash_qla.__version__, 'tilelang', tilelang.__version__)" >> "$RESULTS/versions.txt" 2>&1
timed tests 260 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_cuda_ops.py tests/gpu/test_cuda_graph.py
timed ab_bench_rows 280 python3 benchmarks/gpu/ab_graphed_flash_qla.py --shape 0.8b --median-len 600 --rounds 2 --json "$RESULTS/ab_bench_rows.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
