#!/usr/bin/env bash
# GPU batch M (4 GPUs, run from the repository root; written in the sixth session for the next):
# issue #8's degree-4 per-GPU throughput on FLA after the Ulysses index_select fix, both shapes, at
# 16,384 tokens per GPU against one GPU. The sixth session's batch L tried this on a fresh machine
# and spent its limits in Triton's autotuning; the limits here allow for a cold machine, and the
# kernel seed (common.sh) is saved at the end for the calls after it.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_m.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 4 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
timed sp4_08b_tp_fla 290 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_tp_fla 250 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
note done
