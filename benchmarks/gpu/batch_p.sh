#!/usr/bin/env bash
# GPU batch P (4 GPUs, run from the repository root), eighth session, after batch O measured FLA's fused
# norms (padfree.models.fused) at +22% (0.8B, no checkpointing) and +19% (~4B, checkpointing):
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_p.sh
# Lane GPU0: the CUDA tests of the fused modules and the patched models (batch O's 200 s limit cut them
#   after the first test), one line per test with its duration.
# Lane GPU1: where the host's time goes now that the 8,192-token step with checkpointing is 68% GPU
#   busy: the profile with its self-CPU table, checkpointing on, then off.
# Lane GPU2: the ~4B shape without checkpointing, upstream packed vs padfree (each side's fastest).
# Lane GPU3: the 0.8B shape, fused norms vs compile_elementwise, checkpointing on and off.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --backend fla --warmup 6"
(
  CUDA_VISIBLE_DEVICES=0 timed gpu_tests 500 python3 -m pytest -v -p no:cacheprovider --durations=0 tests/gpu/test_cuda_fused.py tests/gpu/test_cuda_models.py
) &
(
  CUDA_VISIBLE_DEVICES=1 timed prof_ckpt 240 python3 $PROF --checkpointing --out "$RESULTS/prof_ckpt.txt"
  CUDA_VISIBLE_DEVICES=1 timed prof_nockpt 240 python3 $PROF --out "$RESULTS/prof_nockpt.txt"
) &
(
  CUDA_VISIBLE_DEVICES=2 timed bench_4b_nockpt 540 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths upstream_packed,padfree --steps 4 --warmup 2 --json "$RESULTS/bench_4b_nockpt.json"
) &
(
  CUDA_VISIBLE_DEVICES=3 timed bench_08b_compiled 540 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths padfree,padfree_compiled --steps 8 --warmup 3 --json "$RESULTS/bench_08b_compiled.json"
) &
wait
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
