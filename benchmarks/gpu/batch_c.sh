#!/usr/bin/env bash
# GPU batch C (4 GPUs, run from the repository root): sequence parallelism at degree 4.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_c.sh
# The 0.8B shape: bf16 equivalence (Ulysses and context vs an fp32 unsharded reference),
# per-GPU throughput at 4x the row vs 1 GPU, the longest row on 1 vs 4 GPUs; then the ~4B shape's
# equivalence and throughput.
set -u
source benchmarks/gpu/common.sh
versions
SP="torchrun --nproc-per-node 4 --master-port 29521 benchmarks/bench_sequence_parallel.py"
timed sp4_08b_eq_tp 200 $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages equivalence,throughput --eq-tokens 8192 --tokens-per-gpu 16384
timed sp4_08b_long 200 $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages longest_row --long-start 65536
timed sp4_4b 200 $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages equivalence,throughput --eq-tokens 4096 --tokens-per-gpu 16384
note done
