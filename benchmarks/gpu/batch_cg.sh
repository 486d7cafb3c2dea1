#!/usr/bin/env bash
# GPU batch CG (1 GPU), twenty-first session: the gated delta rule's GPU tests after flash_qla_dispatched and
# flash_qla_takes became one question to FLA's own FlashQLA backend (no restated enable rule).
#   RESULTS=/tmp/resCG BUDGET_S=200 bash benchmarks/gpu/batch_cg.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed tests 190 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_cuda_ops.py
