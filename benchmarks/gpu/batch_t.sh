#!/usr/bin/env bash
# GPU batch T (1 GPU, an H100: `nvidia-h100-x1`), ninth session:
#   RESULTS=/tmp/resT BUDGET_S=560 bash benchmarks/gpu/batch_t.sh
# Batch S's H100 profiles: GPU busy 58% of the step without checkpointing and 46% with it; FLA's
# gated delta forward took ~2 ms of host time per call, its RMSNorm ~370 us (about twice the H200
# machine's). This asks Python where the host's time goes (cProfile, benchmarks/profile_train_step.py
# --python-profile), for the fused and the eager norms, without and with checkpointing.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --backend fla --warmup 6"
for ckpt in "" "--checkpointing"; do
  for elementwise in auto torch; do
    name="py${ckpt:+_ckpt}_$elementwise"
    timed "$name" 90 python3 $PROF $ckpt --elementwise-backend $elementwise --out "$RESULTS/$name.txt" --python-profile "$RESULTS/$name.pstats.txt"
  done
done
note done
