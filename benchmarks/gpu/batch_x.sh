#!/usr/bin/env bash
# GPU batch X (1 GPU, an H100: `nvidia-h100-x1`), tenth session:
#   RESULTS=/tmp/resX BUDGET_S=560 bash benchmarks/gpu/batch_x.sh
# 1. The CUDA-graph training step (padfree.cuda_graph) had never run: its GPU tests first. If they
#    fail, the log is the result and the graph bench is skipped.
# 2. 0.8B without checkpointing, two rounds: upstream packed, padfree eager, padfree graphed.
# 3. The ninth session's unverified GPU tests (bench on the device, loss torch baseline, compiled).
# 4. 0.8B with checkpointing: padfree eager vs graphed, if time is left.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed graph_tests 200 python3 -m pytest -v -x -p no:cacheprovider tests/gpu/test_cuda_graph.py
graph_rc=$?
if (( graph_rc == 0 )); then
  timed bench_08b_graph 260 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --rounds 2 --paths upstream_packed,padfree,padfree_graphed --steps 8 --warmup 3 --json "$RESULTS/bench_08b_graph.json"
fi
timed older_tests 150 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_bench.py tests/gpu/test_cuda_loss.py
if (( graph_rc == 0 )); then
  timed bench_08b_graph_ckpt 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --gradient-checkpointing --paths upstream_packed,padfree,padfree_graphed --steps 8 --warmup 3 --json "$RESULTS/bench_08b_graph_ckpt.json"
fi
note done
