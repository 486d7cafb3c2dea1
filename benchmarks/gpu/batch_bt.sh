#!/usr/bin/env bash
# GPU batch BT (1 GPU), nineteenth session, after BS: with flash_qla installed (FLA dispatches the gated delta
# rule to FlashQLA): the GDN GPU tests (FLA's own kernels, FlashQLA through FLA, and the fixed-shape rows that
# must bypass FlashQLA) and the CUDA-graph step tests; the eager 0.8b step's kernels with FlashQLA (FLA_FLASH_QLA=1)
# and without (=0), then the graphed step (FLA's own kernels either way); the kernel bench at the ~4B shape.
#   RESULTS=/tmp/resBT BUDGET_S=560 bash benchmarks/gpu/batch_bt.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
python3 -c "import flash_qla, tilelang; print('flash_qla', flash_qla.__version__, 'tilelang', tilelang.__version__)" >> "$RESULTS/versions.txt" 2>&1
timed tests 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_ops.py tests/gpu/test_cuda_graph.py
P="python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192"
timed prof_eager_flash_qla 70 env FLA_FLASH_QLA=1 $P --out "$RESULTS/prof_eager_flash_qla.txt"
timed prof_eager_fla 70 env FLA_FLASH_QLA=0 $P --out "$RESULTS/prof_eager_fla.txt"
timed prof_graphed 60 $P --cuda-graph --out "$RESULTS/prof_graphed.txt"
timed gdn_backends 200 python3 benchmarks/gpu/bench_gdn_backends.py --json "$RESULTS/gdn_backends.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
