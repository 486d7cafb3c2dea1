#!/usr/bin/env bash
# GPU batch AA (1 GPU, an H100: `nvidia-h100-x1`), written in the tenth session for the next:
#   RESULTS=/tmp/resAA BUDGET_S=560 bash benchmarks/gpu/batch_aa.sh
# 1. What changed after the tenth session's GPU runs: `padfree check` on CUDA (its CUDA-graph line and the
#    fixed-shape row's gate), the bench's default paths (padfree_graphed added on CUDA with FLA), and the
#    graph tests again (document_positions is now shared with the eager forward).
# 2. Where the kernel-bound graphed 0.8B step spends its ~136 ms: the kernel table of one replay, next to
#    the eager step's.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed check_cuda 120 python3 -m padfree.cli check --device cuda
timed graph_tests 240 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_graph.py tests/gpu/test_cuda_train_graph.py
timed bench_tiny_default 120 python3 -m padfree.cli bench --device cuda --shape tiny --row-tokens 2048 --steps 4 --json "$RESULTS/bench_tiny_default.json"
timed prof_graphed 150 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
timed prof_eager 150 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --out "$RESULTS/prof_eager.txt"
note done
