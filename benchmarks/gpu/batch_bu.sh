#!/usr/bin/env bash
# GPU batch BU (1 GPU, the same warm H100 as BT), nineteenth session, as it ran (typed inline with the last ~290 s
# of device time): the GDN GPU tests alone (BT's 200 s went to FlashQLA's first compiles), then the eager 0.8b step
# with FlashQLA again (cut at its limit while FlashQLA compiled its backward for the step's inputs).
#   RESULTS=/tmp/resBU BUDGET_S=290 bash benchmarks/gpu/batch_bu.sh
set -u
source benchmarks/gpu/common.sh
timed tests_ops 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_ops.py -rs
timed prof_eager_flash_qla 100 env FLA_FLASH_QLA=1 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --out "$RESULTS/prof_eager_flash_qla.txt"
