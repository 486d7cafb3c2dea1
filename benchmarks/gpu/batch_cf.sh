#!/usr/bin/env bash
# GPU batch CF (2 GPUs), twenty-first session: the two trainer GPU tests again after their shared assertions moved
# into tests/helpers.py (assert_demo_runs_agree), and the trainer's context-parallel refusal moved before the step.
#   RESULTS=/tmp/resCF BUDGET_S=300 bash benchmarks/gpu/batch_cf.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed tests_train 280 python3 -m pytest -q -s -p no:cacheprovider -rs --durations=0 tests/gpu/test_cuda_train_sp_graph.py tests/gpu/test_cuda_train_graph.py
