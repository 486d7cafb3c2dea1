#!/usr/bin/env bash
# GPU batch AL (2 GPUs, H100 x2), twelfth session:
#   RESULTS=/tmp/resAL BUDGET_S=560 bash benchmarks/gpu/batch_al.sh
# Sequence parallelism at sp=2 after padfree's Triton conv became the CUDA default (eleventh session):
# 1. Equivalence, bf16 sharded vs an fp32 unsharded reference, backend auto: Ulysses now runs padfree's
#    Triton conv on a head shard (strided channels); context runs it on rank 0 and FLA's conv (with the
#    halo state) on rank 1. Neither ran on a GPU before.
# 2. Per-GPU throughput at 16,384 tokens per GPU vs one GPU (issue #7's 90% target), both modes.
# 3. The Ulysses step's kernels on both ranks (where the sp=2 step's extra time goes).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
SP="benchmarks/bench_sequence_parallel.py"
R="torchrun --nproc-per-node 2 --master-port 29581"
timed sp2_equivalence 200 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,context
timed sp2_throughput 200 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,context --warmup 3
timed sp2_profile_ulysses 150 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --checkpointing --backend auto --warmup 4 --sp-mode ulysses --out "$RESULTS/prof_sp2_ulysses.txt"
note done
