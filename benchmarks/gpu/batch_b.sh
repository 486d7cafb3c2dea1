#!/usr/bin/env bash
# GPU batch B (4 GPUs, from the repository root): the Ulysses + FLA fault, sequence parallelism at
# sp=2, and padfree bench without activation checkpointing.
#   RESULTS=/tmp/res BUDGET_S=540 bash benchmarks/gpu/batch_b.sh
set -u
source benchmarks/gpu/common.sh
versions
SP2="torchrun --nproc-per-node 2 --master-port 29512 benchmarks/bench_sequence_parallel.py --out $RESULTS/sp2.jsonl"
(
  CUDA_VISIBLE_DEVICES=3 CUDA_LAUNCH_BLOCKING=1 timed diag_strided_conv 60 python3 benchmarks/gpu/diag_fla_strided_conv.py
  CUDA_VISIBLE_DEVICES=3 timed conv_fla_tests 120 python3 -m pytest -q tests/ops/test_conv1d.py -k "fla_backend or on_cuda"
) &
(
  CUDA_VISIBLE_DEVICES=2 timed bench_08b_nockpt 330 python3 -m padfree.cli bench --shape 0.8b --device cuda --row-tokens 8192 --steps 6 --warmup 2 --no-gradient-checkpointing --paths upstream_packed,padfree --json "$RESULTS/bench_08b_nockpt.json"
) &
(
  export CUDA_VISIBLE_DEVICES=0,1
  timed sp2_eq_context 120 $SP2 --stages equivalence --eq-tokens 4096 --modes context
  timed sp2_eq_ulysses 120 $SP2 --stages equivalence --eq-tokens 4096 --modes ulysses
  grep -q '"error"' "$RESULTS/sp2.jsonl" && CUDA_LAUNCH_BLOCKING=1 timed sp2_eq_blocking 150 $SP2 --stages equivalence --eq-tokens 4096 --modes ulysses,context
  timed sp2_tp_long 260 $SP2 --stages throughput,longest_row --tokens-per-gpu 16384
) &
wait
note done
