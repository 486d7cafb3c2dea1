#!/usr/bin/env bash
# GPU batch J (4 GPUs, run from the repository root; written for the session after the fifth):
# the fifth session's changes, measured (issue #7).
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_j.sh
# Lane GPU0: 0.8B shape, upstream packed vs padfree vs padfree_compiled (now also the loss's chunks),
#   each with activation checkpointing on and off (--fastest: issue #7's fastest-vs-fastest ratio too).
# Lane GPU1: inductor's compiled loss and model on CUDA against fp32 (tests/gpu/test_cuda_compiled.py:
#   the bench gate checks logits only), then the ~4B shape, the same three paths, checkpointing on
#   (all paths), then off (issue #7's 3x target; the JSON keeps what finished if the limit cuts it).
# Lane GPU2,3: Ulysses after the index_select fix (its profile), context parallelism's profile with
#   both ranks' tables and timelines (where its ranks wait), then per-GPU throughput of both modes on
#   FLA at 16,384 tokens per GPU against one GPU.
set -u
source benchmarks/gpu/common.sh
versions
BENCH="python3 -m padfree.cli bench --device cuda --paths upstream_packed,padfree,padfree_compiled"
(
  CUDA_VISIBLE_DEVICES=0 timed bench_08b_fastest 520 $BENCH --shape 0.8b --fastest --steps 6 --warmup 3 --json "$RESULTS/bench_08b.json"
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timed gpu_tests_compiled 120 python3 -m pytest -q tests/gpu/test_cuda_compiled.py
  timed bench_4b_fastest 400 $BENCH --shape 4b --fastest --steps 4 --warmup 2 --json "$RESULTS/bench_4b.json"
) &
(
  export CUDA_VISIBLE_DEVICES=2,3
  R="torchrun --nproc-per-node 2 --master-port 29581"
  PROF="benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --checkpointing --backend fla --warmup 6"
  timed prof_ulysses 150 $R $PROF --sp-mode ulysses --out "$RESULTS/prof_ulysses.txt"
  timed prof_context 150 $R $PROF --sp-mode context --out "$RESULTS/prof_context.txt" --trace "$RESULTS/trace_context"
  timed sp2_tp_fla 220 $R benchmarks/bench_sequence_parallel.py --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
) &
wait
# The traces travel as files of their own: the device tool returns at most 16 MiB per file.
mv "$RESULTS"/trace_context/*.gz "${OUT:-/tmp}/" 2>/dev/null
save_kernel_cache "${OUT:-/tmp}/tilelang-cache.tgz"
note done
