#!/usr/bin/env bash
# GPU batch AD (1 GPU, an H100: `nvidia-h100-x1`), eleventh session: padfree's own conv kernels
# (padfree.ops.conv1d.triton_kernels, now what backend "auto" runs on CUDA) against FLA's.
#   RESULTS=/tmp/resAD BUDGET_S=570 bash benchmarks/gpu/batch_ad.sh
# 1. The kernels against the naive oracle (fp32, bf16, empty documents, a CUDA graph with changing offsets).
# 2. The conv alone, forward + backward: FLA, padfree's, torch (benchmarks/gpu/bench_conv.py).
# 3. The 0.8b graphed step with padfree's conv vs with FLA's (backend="fla"), upstream packed as the baseline.
# 4. The models through the new conv: packed vs per-document (bf16 vs fp32), the graph tests.
# 5. The graphed step's kernel table.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed conv_tests 150 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
conv_rc=$?
timed bench_conv 90 python3 benchmarks/gpu/bench_conv.py --json "$RESULTS/bench_conv.json"
if (( conv_rc == 0 )); then
  timed bench_08b_conv 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --rounds 2 --paths upstream_packed,padfree_graphed,padfree_graphed_fla_conv --steps 8 --warmup 3 --json "$RESULTS/bench_08b_conv.json"
  timed model_tests 150 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_models.py tests/gpu/test_cuda_graph.py
  timed prof_graphed 60 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --cuda-graph --out "$RESULTS/prof_graphed.txt"
fi
note done
