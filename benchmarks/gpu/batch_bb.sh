#!/usr/bin/env bash
# GPU batch BB (2 GPUs), sixteenth session:
#   RESULTS=/tmp/resBB BUDGET_S=540 bash benchmarks/gpu/batch_bb.sh
# The layers' "gather_scatter" exchange (SequenceParallel gdn_exchange / attention_exchange): each rank
# all-gathers the layer input, runs its heads over the whole row through out_proj / o_proj, and the partial sums
# are reduce-scattered back; no all-to-all and none of its transposing copies (fifteenth session's profile: 78
# strided copies, 5.3 ms of a 258 ms sp=2 step).
# 1. The captured sharded step's test (now with a gather_scatter setup under activation checkpointing).
# 2. sp=2 0.8B per-GPU throughput, captured, stream-timed, same process: the old default (inputs:projections),
#    GDN gather_scatter only, both layer kinds gather_scatter (the new default at this shape).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29598"
SP="benchmarks/bench_sequence_parallel.py"
timed test_sp_graph 220 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_stream 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses::inputs:projections,ulysses::gather_scatter:projections,ulysses::gather_scatter:gather_scatter --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
note done
