#!/usr/bin/env bash
# GPU batch AT (2 GPUs), thirteenth session, the last ~200 s of device time:
#   RESULTS=/tmp/resAT BUDGET_S=180 bash benchmarks/gpu/batch_at.sh
# The loss no longer copies a host count (num_items_in_batch, a CPU tensor) to the GPU: that pageable copy
# synchronised the stream in the middle of every sequence-parallel step (AS profile: 37 ms of host wait,
# 3 syncs a step against the one-GPU step's 2). The sp=2 ratios again, then the profile's sync count.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_tp_nockpt_rounds 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections,context --warmup 3 --steps 4 --rounds 3 --no-checkpointing
timed sp2_prof_shapes 60 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --shapes --out "$RESULTS/prof_sp2_ulysses_shapes.txt"
note done
