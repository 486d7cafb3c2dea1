#!/usr/bin/env bash
# GPU batch H (4 GPUs, run from the repository root; written for the session after the fourth):
# what the fourth session left open on sequence parallelism.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_h.sh
# Lane GPU0,1: Ulysses on FLA against the fp32 reference (lifts the auto -> torch rule if it passes),
#   then a profile of one context-parallel and one Ulysses step on FLA after a long warm-up.
# Lane GPU2: the 1-GPU profile with the same tokens per GPU (the baseline of those profiles), then
#   the ~4B shape against upstream packed (issue #7's 3x target), with checkpointing.
# Lane GPU3: the 1-GPU profile with activation checkpointing (its step grows more than upstream's),
#   then upstream packed and padfree with and without compile_elementwise side by side (`padfree bench`, same process).
set -u
source benchmarks/gpu/common.sh
versions
SP="benchmarks/bench_sequence_parallel.py --shape 0.8b"
PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --checkpointing --backend fla --warmup 6"
(
  export CUDA_VISIBLE_DEVICES=0,1
  R="torchrun --nproc-per-node 2 --master-port 29581"
  timed sp2_eq_ulysses_fla 240 $R $SP --out "$RESULTS/sp2_eq.jsonl" --stages equivalence --eq-tokens 4096 --backend fla --modes ulysses
  timed prof_context 150 $R $PROF --sp-mode context --out "$RESULTS/prof_context.txt"
  timed prof_ulysses 120 $R $PROF --sp-mode ulysses --out "$RESULTS/prof_ulysses.txt"
) &
(
  CUDA_VISIBLE_DEVICES=2 timed prof_1gpu 200 python3 $PROF --out "$RESULTS/prof_1gpu.txt"
  CUDA_VISIBLE_DEVICES=2 timed bench_4b 320 python3 -m padfree.cli bench --shape 4b --device cuda --steps 4 --warmup 2 --paths upstream_packed,padfree,padfree_compiled --json "$RESULTS/bench_4b.json"
) &
(
  CUDA_VISIBLE_DEVICES=3 timed prof_ckpt_8k 200 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --checkpointing --out "$RESULTS/prof_ckpt_8k.txt"
  CUDA_VISIBLE_DEVICES=3 timed bench_compiled 300 python3 -m padfree.cli bench --shape 0.8b --device cuda --no-gradient-checkpointing --steps 6 --warmup 3 --paths upstream_packed,padfree,padfree_compiled --json "$RESULTS/bench_compiled.json"
) &
wait
save_kernel_cache "${OUT:-/tmp}/tilelang-cache.tgz"
note done
