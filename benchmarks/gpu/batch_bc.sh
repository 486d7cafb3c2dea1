#!/usr/bin/env bash
# GPU batch BC (2 GPUs), sixteenth session, on the machine BB warmed:
#   RESULTS=/tmp/resBC BUDGET_S=540 bash benchmarks/gpu/batch_bc.sh
# 1. ~4B sp=2 per-GPU throughput, captured, stream-timed: the default there (inputs:projections: P * hidden =
#    5120 > 4096 = heads x head dim, so "auto" keeps the all-to-alls) against gather_scatter in both layer kinds.
# 2. Profiles of the 0.8B sp=2 captured step with gather_scatter (where the sharded step's time goes now).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29599"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_tp_stream_4b 230 $R $SP --shape 4b --out "$RESULTS/sp2_4b.jsonl" --stages throughput --tokens-per-gpu 8192 --backend auto --modes ulysses::inputs:projections,ulysses::gather_scatter:gather_scatter --warmup 3 --steps 4 --rounds 2 --no-checkpointing --cuda-graph --stream-timing
timed prof_sp2_graph 80 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses::gather_scatter:gather_scatter --cuda-graph --out "$RESULTS/prof_sp2_gs_graph.txt"
note done
