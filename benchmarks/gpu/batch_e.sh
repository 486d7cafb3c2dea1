#!/usr/bin/env bash
# GPU batch E (4 GPUs, run from the repository root): issue #5 on 2 GPUs, and the Ulysses + FLA fault.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_e.sh
# Lane GPU0,1: bf16 sequence-parallel equivalence on padfree's torch kernels (no compiles), then
#   per-GPU throughput at twice the row (auto backend) and the longest row, 1 vs 2 GPUs.
# Lane GPU2,3: the fault repro with one component switched at a time (benchmarks/gpu/repro_ulysses_fla.py),
#   then the bf16 equivalence of context parallelism on FLA's kernels.
set -u
source benchmarks/gpu/common.sh
versions
SP="benchmarks/bench_sequence_parallel.py --shape 0.8b"
REPRO="benchmarks/gpu/repro_ulysses_fla.py"
(
  export CUDA_VISIBLE_DEVICES=0,1
  R="torchrun --nproc-per-node 2 --master-port 29531"
  timed sp2_eq_torch 150 $R $SP --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 4096 --backend torch
  timed sp2_throughput 240 $R $SP --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --modes ulysses,context
  timed sp2_long_context 300 $R $SP --out "$RESULTS/sp2.jsonl" --stages longest_row --long-start 65536 --long-mode context \
    || timed sp2_long_ulysses 300 $R $SP --out "$RESULTS/sp2.jsonl" --stages longest_row --long-start 65536 --long-mode ulysses
) &
(
  export CUDA_VISIBLE_DEVICES=2,3
  R="torchrun --nproc-per-node 2 --master-port 29541"
  CUDA_LAUNCH_BLOCKING=1 timed repro_blocking 240 $R $REPRO ulysses fla
  timed repro_plain 90 $R $REPRO ulysses fla
  REPRO_WAIT=1 timed repro_wait 90 $R $REPRO ulysses fla
  REPRO_CONV=torch timed repro_conv_torch 90 $R $REPRO ulysses fla
  REPRO_GDN=torch timed repro_gdn_torch 90 $R $REPRO ulysses fla
  timed sp2_eq_context_fla 200 $R $SP --out "$RESULTS/sp2_fla.jsonl" --stages equivalence --eq-tokens 4096 --backend auto --modes context
) &
wait
note done
