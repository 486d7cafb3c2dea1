#!/usr/bin/env bash
# GPU batch N (4 GPUs, run from the repository root; written in the sixth session for the next).
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_n.sh
# Lane GPU0: inductor's compiled loss and model on CUDA against fp32 (tests/gpu/test_cuda_compiled.py;
#   its 120 s limit ran out compiling on the sixth session's fresh machine), then issue #7's memory
#   target on an 80 GB card: the 0.8B shape's longest row on one GPU (524,288 was on a 143 GiB H200).
# Lane GPU1: the ~4B shape, upstream packed vs padfree vs padfree_compiled vs padfree_selective
#   (selective activation checkpointing, timed with checkpointing only), checkpointing on and off
#   (issue #7's 3x target; the sixth session's run timed only upstream before its limit).
# Lane GPU2,3: the sp=2 profiles after the index_select fix: Ulysses, then context parallelism with
#   both ranks' tables and Chrome traces (where its ranks wait; the traces are moved to $OUT).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
SP="benchmarks/bench_sequence_parallel.py"
(
  export CUDA_VISIBLE_DEVICES=0
  timed gpu_tests_compiled 300 python3 -m pytest -q tests/gpu/test_cuda_compiled.py
  timed long_08b_1gpu 240 torchrun --nproc-per-node 1 --master-port 29571 $SP --shape 0.8b --out "$RESULTS/long_08b.jsonl" --stages longest_row --long-start 131072 --long-setups single --backend fla
) &
(
  CUDA_VISIBLE_DEVICES=1 timed bench_4b_fastest 545 python3 -m padfree.cli bench --device cuda --paths upstream_packed,padfree,padfree_compiled,padfree_selective --shape 4b --fastest --steps 4 --warmup 2 --json "$RESULTS/bench_4b.json"
) &
(
  export CUDA_VISIBLE_DEVICES=2,3
  R="torchrun --nproc-per-node 2 --master-port 29581"
  PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --checkpointing --backend fla --warmup 6"
  timed prof_ulysses 240 $R $PROF --sp-mode ulysses --out "$RESULTS/prof_ulysses.txt"
  timed prof_context 300 $R $PROF --sp-mode context --out "$RESULTS/prof_context.txt" --trace "$RESULTS/trace_context"
) &
wait
# The traces travel as files of their own: the device tool returns at most 16 MiB per file.
mv "$RESULTS"/trace_context/*.gz "${OUT:-/tmp}/" 2>/dev/null
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
