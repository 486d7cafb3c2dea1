#!/usr/bin/env bash
# GPU batch BE (2 GPUs), sixteenth session, after BB, BC, BD:
#   RESULTS=/tmp/resBE BUDGET_S=540 bash benchmarks/gpu/batch_be.sh
# The gathered projections' backward (padfree.parallel.comm.gathered_projections) now runs the input gradient's
# reduce-scatter beside the weight gradients instead of after them (BD's profile: 48 reduce-scatters, 9.6 ms
# on the step's critical path, half of them in the backward).
# (Run record: the Function and the bench's "@serial" suffix were reverted after this run; docs/benchmarks.md.)
# 1. The captured sharded step's test (gather_scatter and inputs setups go through the new Function).
# 2. sp=2 0.8B, captured, stream-timed, one process: inputs:projections (the fifteenth session's default),
#    gather_scatter:gather_scatter with the reduce-scatter after the weight gradients (@serial) and beside them.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29601"
SP="benchmarks/bench_sequence_parallel.py"
timed test_sp_graph 220 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_stream 170 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses::inputs:projections,ulysses::gather_scatter:gather_scatter@serial,ulysses::gather_scatter:gather_scatter --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
timed prof_sp2_graph 80 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --cuda-graph --out "$RESULTS/prof_sp2_graph.txt"
note done
