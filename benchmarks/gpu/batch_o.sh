#!/usr/bin/env bash
# GPU batch O (4 GPUs, run from the repository root), eighth session: FLA's fused norms and SwiGLU
# (padfree.models.fused, now padfree's default on CUDA) against upstream's eager ones.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_o.sh
# Lane GPU0: the fused modules and the patched models against fp32 references (tests/gpu), then the
#   0.8B bench, each path with checkpointing on and off (issue #7's same-run ratios).
# Lane GPU1: the ~4B bench with checkpointing (issue #7's 3x target), fused vs eager norms vs upstream.
# Lane GPU2,3: sp=2 per-GPU throughput (Ulysses, context) with the fused norms and the skipped state
#   summaries; then side by side the 1-GPU 0.8B 8,192-token profile with fused (GPU2) and eager (GPU3)
#   norms: GPU busy fraction and kernel table.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
SP="benchmarks/bench_sequence_parallel.py"
PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --checkpointing --backend fla --warmup 6"
(
  CUDA_VISIBLE_DEVICES=0 timed gpu_tests 200 python3 -m pytest -q -rA tests/gpu/test_cuda_fused.py tests/gpu/test_cuda_models.py
  CUDA_VISIBLE_DEVICES=0 timed bench_08b_fastest 540 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths upstream_packed,padfree_eager_norms,padfree --steps 8 --warmup 3 --json "$RESULTS/bench_08b.json"
) &
(
  CUDA_VISIBLE_DEVICES=1 timed bench_4b_ckpt 545 python3 -m padfree.cli bench --device cuda --shape 4b --gradient-checkpointing --paths upstream_packed,padfree_eager_norms,padfree --steps 4 --warmup 2 --json "$RESULTS/bench_4b.json"
) &
(
  CUDA_VISIBLE_DEVICES=2,3 timed sp2_throughput 260 torchrun --nproc-per-node 2 --master-port 29581 $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
  ( CUDA_VISIBLE_DEVICES=2 timed prof_fused 260 python3 $PROF --elementwise-backend fla --out "$RESULTS/prof_fused.txt" ) &
  ( CUDA_VISIBLE_DEVICES=3 timed prof_eager 260 python3 $PROF --elementwise-backend torch --out "$RESULTS/prof_eager.txt" ) &
  wait
) &
wait
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
