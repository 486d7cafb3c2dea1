#!/usr/bin/env bash
# GPU batch CD (2 GPUs), twenty-first session: `padfree train --cuda-graph --sp-degree 2` (the captured Ulysses step
# in the trainer) against the one-GPU graphed trainer, and resumed; the captured sharded step with the family's GDN
# head dims (FlashQLA's kernels where flash_qla is installed); the one-GPU graphed trainer again (the trainer changed).
# (The first attempt, CD_h200 on 2x H200, ran with limits 330 s and 200 s and without -s: its sp-graph tests were cut.)
#   RESULTS=/tmp/resCD BUDGET_S=560 bash benchmarks/gpu/batch_cd.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed tests_train 230 python3 -m pytest -q -s -p no:cacheprovider -rs --durations=0 tests/gpu/test_cuda_train_sp_graph.py tests/gpu/test_cuda_train_graph.py
timed tests_sp_graph 320 python3 -m pytest -q -p no:cacheprovider -rs --durations=0 tests/gpu/test_cuda_sp_graph.py
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
