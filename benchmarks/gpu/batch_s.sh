#!/usr/bin/env bash
# GPU batch S (1 GPU, an H100: `nvidia-h100-x1`), ninth session:
#   RESULTS=/tmp/resS BUDGET_S=560 bash benchmarks/gpu/batch_s.sh
# The loss's per-chunk softmax now runs in FLA's cross-entropy kernels on CUDA (padfree.loss_chunked,
# softmax_backend="auto"). This checks it against F.cross_entropy on fp32 logits, times the loss alone
# against the torch softmax path (and FLA's own fused linear CE), then repeats batch Q's H100 no-checkpointing
# comparison (fused -7.5% vs eager there) with 16 timed rows and profiles the fused step.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed loss_tests 100 python3 -m pytest -v -p no:cacheprovider --durations=0 tests/gpu/test_cuda_loss.py
for T in 8192 16384; do
  timed "loss_$T" 50 python3 benchmarks/bench_loss.py --device cuda --T $T --repeats 5 --with-fla --skip-full --json
done
timed bench_08b_nockpt 200 python3 -m padfree.cli bench --device cuda --shape 0.8b --no-gradient-checkpointing --paths upstream_packed,padfree_eager_norms,padfree --steps 16 --warmup 3 --json "$RESULTS/bench_08b_nockpt.json"
timed step_tests 150 python3 -m pytest -v -p no:cacheprovider --durations=0 tests/gpu/test_cuda_fused.py tests/gpu/test_cuda_ops.py -k "training_step or row_offsets"
timed prof_nockpt 60 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --backend fla --warmup 6 --out "$RESULTS/prof_nockpt.txt"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
