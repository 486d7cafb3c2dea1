#!/usr/bin/env bash
# Historical (eleventh session): patch(gate_in_kernel=True), its bench path and tests/gpu/test_cuda_gate.py
# were removed in the twelfth session after batch AC showed the fused gate did not pay.
# GPU batch AA (1 GPU, an H100: `nvidia-h100-x1`), written in the tenth session for the next:
#   RESULTS=/tmp/resAA BUDGET_S=560 bash benchmarks/gpu/batch_aa.sh
# What changed after the tenth session's GPU runs, first:
# 1. `padfree check` on CUDA: its CUDA-graph line and the fixed-shape row's gate.
# 2. The graph tests again (document_positions is now shared with the eager forward), and the GDN gate
#    fused into FLA's kernels (patch(gate_in_kernel=True)), which has never run: tests/gpu/test_cuda_gate.py.
# 3. If those pass: the graphed 0.8B step with and without the fused gate, two rounds.
# Then benchmarks/gpu/batch_ab.sh (the bench's default paths on CUDA, kernel tables of the graphed step).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed check_cuda 120 python3 -m padfree.cli check --device cuda
timed gpu_tests 260 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_gate.py tests/gpu/test_cuda_graph.py tests/gpu/test_cuda_train_graph.py
tests_rc=$?
if (( tests_rc == 0 )); then
  timed bench_08b_gate 240 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --rounds 2 --paths upstream_packed,padfree_graphed,padfree_graphed_gate_in_kernel --steps 8 --warmup 3 --json "$RESULTS/bench_08b_gate.json"
fi
note done
