#!/usr/bin/env bash
# GPU batch K (4 GPUs, run from the repository root; written for the session after the fifth): the
# degree-4 runs of issue #8 still missing after the fifth session, and FLA throughput at degree 4
# after the Ulysses index_select fix.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_k.sh
# The 1-GPU longest row of the ~4B shape is known (131,072 on an H200, fifth session), so only the
# sharded search runs (--long-setups sp); --long-start counts tokens per GPU.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 4 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
timed sp4_08b_tp_fla 200 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_long 200 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages longest_row --long-start 65536 --long-mode context --long-setups sp
timed sp4_4b_tp_fla 200 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
note done
