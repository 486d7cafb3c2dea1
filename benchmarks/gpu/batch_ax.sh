#!/usr/bin/env bash
# GPU batch AX (2 GPUs), fifteenth session:
#   RESULTS=/tmp/resAX BUDGET_S=560 bash benchmarks/gpu/batch_ax.sh
# The captured sharded step sums the gradients during the backward (padfree.parallel.grad_reduce: every .grad a
# view into one flat buffer, buckets all-reduced as they complete) instead of after it (reduce_gradients in the
# update graph: a flatten, the all-reduce, ~300 copies back).
# 1. The captured sharded step's test, now with 2 rows per optimizer step and the sum after the backward too.
# 2. sp=2 per-GPU throughput, every setup captured, the same documents on both sides; the sum during the backward
#    ("ulysses") and after it ("ulysses@after") in one process.
# 3. Profiles of the captured steps: sp=2 and one GPU, for the kernel-time breakdown.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29595"
SP="benchmarks/bench_sequence_parallel.py"
timed test_sp_graph 240 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_graph 130 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses@after --warmup 3 --steps 3 --rounds 3 --no-checkpointing --cuda-graph
timed prof_sp2_graph 70 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --cuda-graph --out "$RESULTS/prof_sp2_ulysses_graph.txt"
timed prof_1_graph 60 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --cuda-graph --out "$RESULTS/prof_1gpu_graph.txt"
note done
