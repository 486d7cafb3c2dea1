#!/usr/bin/env bash
# GPU batch D: locate the Ulysses + FLA fault (GPUs 0,1); context-parallel bf16 equivalence on NCCL (GPUs 2,3).
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 2 --master-port 29531 benchmarks/gpu/repro_ulysses_fla.py"
(
  export CUDA_VISIBLE_DEVICES=0,1
  CUDA_LAUNCH_BLOCKING=1 timed repro_ulysses_fla 200 $R ulysses fla
  timed repro_ulysses_torch 60 $R ulysses torch
  timed repro_context_fla 80 $R context fla
) &
(
  export CUDA_VISIBLE_DEVICES=2,3
  timed sp2_eq_context 300 torchrun --nproc-per-node 2 --master-port 29532 benchmarks/bench_sequence_parallel.py --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 4096 --modes context
) &
wait
note done
