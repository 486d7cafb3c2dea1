#!/usr/bin/env bash
# GPU batch AR (2 GPUs), thirteenth session:
#   RESULTS=/tmp/resAR BUDGET_S=560 bash benchmarks/gpu/batch_ar.sh
# 1. The one-GPU 0.8b step at 16,384 tokens by op and shape, to set against the sp=2 step's (AQ had only
#    the sp=2 one): which small kernels does sharding add?
# 2. Ulysses' GDN layers all-gathering their input (gdn_exchange "inputs", the new default at sp=2 for
#    0.8b: 1/3 of the bytes) against the all-to-all of the projections (AQ's code), rounds in one process,
#    without and with checkpointing; the sp=2 profile by shape.
# 3. Equivalence at sp=2 of both exchanges (bf16 vs fp32 unsharded), with what deadline is left.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29588"
SP="benchmarks/bench_sequence_parallel.py"
( export CUDA_VISIBLE_DEVICES=0; timed prof_1gpu_16k_shapes 120 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --shapes --out "$RESULTS/prof_1gpu_16k_shapes.txt" )
timed sp2_prof_shapes 100 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --shapes --out "$RESULTS/prof_sp2_ulysses_shapes.txt"
timed sp2_tp_nockpt_rounds 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections,context --warmup 3 --steps 4 --rounds 3 --no-checkpointing
timed sp2_tp_ckpt_rounds 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 2 --steps 4 --rounds 2
timed sp2_equivalence 300 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,ulysses::projections
note done
