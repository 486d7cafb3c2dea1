#!/usr/bin/env bash
# GPU batch I (4 GPUs, run from the repository root; written for the session after the fourth):
# the degree-4 runs of issue #8 that the fourth session did not finish (docs/benchmarks.md).
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_i.sh
# The fp32 reference of the ~4B shape needs more than 100 s; FLA compiles its kernel variants in
# the first process of each mode, so the throughput runs come after the equivalence runs.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 4 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
timed sp4_4b_eq 240 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages equivalence --eq-tokens 4096 --backend torch
timed sp4_08b_tp_fla 200 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_long 240 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages longest_row --long-start 65536 --long-mode context
timed sp4_08b_long_ulysses 240 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages longest_row --long-start 262144 --long-mode ulysses --long-setups sp
save_kernel_cache "${OUT:-/tmp}/tilelang-cache.tgz"
note done
