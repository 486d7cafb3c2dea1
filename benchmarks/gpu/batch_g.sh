#!/usr/bin/env bash
# GPU batch G (4 GPUs, run from the repository root): issue #5 on FLA's kernels, 2 GPUs per lane.
#   RESULTS=/tmp/res BUDGET_S=330 bash benchmarks/gpu/batch_g.sh
# Lane GPU0,1: bf16 equivalence of Ulysses and context parallelism on FLA's kernels (the full 0.8B
#   shape, as in the run that faulted in the third session), then per-GPU throughput at twice the row.
# Lane GPU2,3: the longest row on 2 GPUs (context parallelism), from 2 x the 1-GPU limit of batch E.
set -u
source benchmarks/gpu/common.sh
versions
SP="benchmarks/bench_sequence_parallel.py --shape 0.8b"
(
  export CUDA_VISIBLE_DEVICES=0,1
  R="torchrun --nproc-per-node 2 --master-port 29561"
  timed sp2_eq_fla 200 $R $SP --out "$RESULTS/sp2_eq_fla.jsonl" --stages equivalence --eq-tokens 4096 --backend fla --modes ulysses,context
  timed sp2_tp_fla 200 $R $SP --out "$RESULTS/sp2_tp_fla.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes context,ulysses --steps 3 --warmup 1
) &
(
  export CUDA_VISIBLE_DEVICES=2,3
  R="torchrun --nproc-per-node 2 --master-port 29571"
  timed sp2_long 320 $R $SP --out "$RESULTS/sp2_long.jsonl" --stages longest_row --long-start 524288 --long-mode context --long-setups sp
) &
wait
note done
