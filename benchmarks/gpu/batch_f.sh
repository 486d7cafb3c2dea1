#!/usr/bin/env bash
# GPU batch F (4 GPUs, run from the repository root, after batch E on the same machine: FLA's
# kernels are compiled by then): sequence parallelism at degree 4 (issue #8).
#   RESULTS=/tmp/res BUDGET_S=540 bash benchmarks/gpu/batch_f.sh
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 4 --master-port 29551"
SP="benchmarks/bench_sequence_parallel.py"
timed sp4_08b_eq 120 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages equivalence --eq-tokens 8192 --backend torch
timed sp4_08b_tp 170 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --modes context,ulysses
timed sp4_08b_long 150 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages longest_row --long-start 65536 --long-mode context
timed sp4_4b_eq 100 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages equivalence --eq-tokens 4096 --backend torch
timed sp4_4b_tp 150 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages throughput --tokens-per-gpu 16384 --modes context,ulysses
note done
