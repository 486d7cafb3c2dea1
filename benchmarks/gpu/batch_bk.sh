#!/usr/bin/env bash
# GPU batch BK (4 GPUs), seventeenth session, after BJ:
#   RESULTS=/tmp/resBK BUDGET_S=400 bash benchmarks/gpu/batch_bk.sh
# Symmetric memory at 4 ranks, where each rank has three peers (BH-BJ ran 2): 1. the fused collectives' GPU test
# (4 processes) against NCCL and an fp32 reference; 2. the bf16 equivalence stage at sp=4 against the fp32
# unsharded model, c10d's default exchanges and gather_scatter over symmetric memory; 3. sp=4 0.8B per-GPU
# throughput, captured, stream-timed, the same two.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 4 --master-port 29615"
SP="benchmarks/bench_sequence_parallel.py"
timed test_fused_collectives 90 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_fused_collectives.py
require_fla
MODES="ulysses,ulysses:symmetric_memory:gather_scatter:gather_scatter"
timed sp4_equivalence 130 $R $SP --shape 0.8b --out "$RESULTS/sp4_eq.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes $MODES
timed sp4_tp_stream 150 $R $SP --shape 0.8b --out "$RESULTS/sp4.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes $MODES --warmup 3 --steps 4 --rounds 2 --no-checkpointing --cuda-graph --stream-timing
note done
