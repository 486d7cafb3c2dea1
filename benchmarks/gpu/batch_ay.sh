#!/usr/bin/env bash
# GPU batch AY (2 GPUs), fifteenth session, after AX on the same machine:
#   RESULTS=/tmp/resAY BUDGET_S=560 bash benchmarks/gpu/batch_ay.sh
# 1. sp=2 per-GPU throughput at the ~4B shape, captured, no checkpointing, 8,192 tokens per GPU: the exchanged
#    bytes grow with the hidden size, the FLOPs with its square, so the ratio to one GPU should rise with the shape.
# 2. Single GPU, ~4B, each path at its fastest (--fastest): upstream packed vs padfree graphed (issue #7's 3x).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29596"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_tp_graph_4b 200 $R $SP --shape 4b --out "$RESULTS/sp2_4b.jsonl" --stages throughput --tokens-per-gpu 8192 --backend auto --modes ulysses --warmup 3 --steps 3 --rounds 2 --no-checkpointing --cuda-graph
timed bench_4b_fastest 330 python3 -m padfree.cli bench --device cuda --shape 4b --fastest --paths upstream_packed,padfree_graphed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_fastest.json"
note done
