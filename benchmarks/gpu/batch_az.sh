#!/usr/bin/env bash
# GPU batch AZ (2 GPUs), fifteenth session, after AX and AY:
#   RESULTS=/tmp/resAZ BUDGET_S=560 bash benchmarks/gpu/batch_az.sh
# 1. The captured sharded step's test; its accumulation setup now trains fp32 weights under bf16 autocast (AX: in
#    bf16 the embedding differed from the eager run by 9.8% of its update; rounding, or a real difference?).
# 2. sp=2 per-GPU throughput, captured, timed as a training loop runs (--stream-timing: rows back to back, no
#    host sync per step; AX's profile: replay-only steps of 225.1 ms (1 GPU) and 258.5 ms (sp=2) against 238.5
#    and 281 ms synced step medians, the difference being each row's host preparation); 0.8B and ~4B.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29597"
SP="benchmarks/bench_sequence_parallel.py"
timed test_sp_graph 200 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_stream 110 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses@after --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
timed sp2_tp_stream_4b 200 $R $SP --shape 4b --out "$RESULTS/sp2_4b.jsonl" --stages throughput --tokens-per-gpu 8192 --backend auto --modes ulysses --warmup 3 --steps 4 --rounds 2 --no-checkpointing --cuda-graph --stream-timing
note done
