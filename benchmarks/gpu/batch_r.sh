#!/usr/bin/env bash
# GPU batch R (1 GPU, an H100: `nvidia-h100-x1`), written in the eighth session for the next:
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_r.sh
# Batch Q's H100 run gave the fused norms -7.5% without checkpointing (+16% with it), where every
# H200 run favoured them. This repeats that comparison with twice the timed rows, profiles both
# paths' steps with their host (self-CPU) tables, and runs the fused modules' CUDA tests, now with
# fp32 weights under bf16 autocast too (what `padfree train` does on CUDA; not yet run on a GPU).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --backend fla --warmup 6"
timed gpu_tests 200 python3 -m pytest -v -p no:cacheprovider --durations=0 tests/gpu/test_cuda_fused.py "tests/gpu/test_cuda_ops.py::test_row_offsets_reach_the_gpu_without_a_stream_sync"
timed bench_08b_nockpt 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree_eager_norms,padfree --steps 16 --warmup 3 --json "$RESULTS/bench_08b_nockpt.json"
for elementwise in fla torch; do
  timed "prof_nockpt_$elementwise" 60 python3 $PROF --elementwise-backend $elementwise --out "$RESULTS/prof_nockpt_$elementwise.txt"
done
timed long_08b_262k 60 torchrun --nproc-per-node 1 --master-port 29571 benchmarks/bench_sequence_parallel.py --shape 0.8b --out "$RESULTS/long_08b.jsonl" --stages longest_row --long-start 262144 --long-setups single --backend fla
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
