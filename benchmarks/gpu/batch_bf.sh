#!/usr/bin/env bash
# GPU batch BF (2 GPUs), sixteenth session, after BE:
#   RESULTS=/tmp/resBF BUDGET_S=300 bash benchmarks/gpu/batch_bf.sh
# The step's all-gathers and reduce-scatters took 150-200 us of kernel time each in the profiles (16 MiB a rank),
# ~3x what NVLink should take. 1. The same collectives alone (bench_collectives.py), captured and eager.
# 2. A Chrome trace of one captured sp=2 0.8B step (gather_scatter): which calls are slow, forward or backward,
#    and what runs beside them.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 2 --master-port 29602"
timed collectives 60 $R benchmarks/bench_collectives.py --out "$RESULTS/collectives.jsonl"
require_fla
timed prof_sp2_trace 80 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --cuda-graph --out "$RESULTS/prof_sp2_graph.txt" --trace "$RESULTS/trace"
note done
