#!/usr/bin/env bash
# GPU batch AG (1 GPU, an H100), eleventh session, after batch AF: the GPU tests through the new default conv
# (padfree's Triton kernels), the ~4B shape at each side's fastest, and the graphed 0.8b step's kernel table.
#   RESULTS=/tmp/resAG BUDGET_S=575 bash benchmarks/gpu/batch_ag.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed gpu_tests 260 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_models.py tests/gpu/test_cuda_graph.py tests/gpu/test_cuda_train_graph.py tests/gpu/test_cuda_ops.py tests/gpu/test_cuda_gate.py
timed prof_graphed 60 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
timed bench_4b_fastest 240 python3 -m padfree.cli bench --device cuda --shape 4b --fastest --paths upstream_packed,padfree_graphed --steps 6 --warmup 2 --json "$RESULTS/bench_4b_fastest.json"
note done
