#!/usr/bin/env bash
# GPU batch BJ (2 GPUs), seventeenth session, after BI:
#   RESULTS=/tmp/resBJ BUDGET_S=540 bash benchmarks/gpu/batch_bj.sh
# BI: symmetric memory (with the copy engine sending the projections' backward sums) 0.914 against c10d's 0.887,
# same process; its step's communication-only time 15.7 -> 4.0 ms (trace). 1. The bf16 equivalence stage again
# for symmetric memory (BH ran it before the sums changed). 2. The ~4B shape at sp=2, 8,192 tokens per GPU: the
# default exchanges (all-to-alls: gather_scatter moves 1.25x their bytes there) against gather_scatter over
# symmetric memory, each in its own process beside its own one-GPU run (three captured ~4B steps in one process
# ran out of memory in the sixteenth session).
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29614"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_equivalence 120 $R $SP --shape 0.8b --out "$RESULTS/sp2_eq.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses:symmetric_memory
ARGS="--shape 4b --stages throughput --tokens-per-gpu 8192 --backend auto --warmup 3 --steps 4 --rounds 2 --no-checkpointing --cuda-graph --stream-timing"
timed sp2_4b_default 170 $R $SP $ARGS --modes ulysses --out "$RESULTS/sp2_4b_default.jsonl"
timed sp2_4b_symm_gs 170 $R $SP $ARGS --modes ulysses:symmetric_memory:gather_scatter:gather_scatter --out "$RESULTS/sp2_4b_symm_gs.jsonl"
note done
