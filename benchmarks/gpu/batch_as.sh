#!/usr/bin/env bash
# GPU batch AS (2 GPUs), thirteenth session, after AR:
#   RESULTS=/tmp/resAS BUDGET_S=560 bash benchmarks/gpu/batch_as.sh
# Ulysses' GDN input exchange now projects mixed_qkv and the gates with their own matmuls (contiguous conv
# input: AR's profile had an 18 x 0.23 ms copy of the conv's strided input and the slice's backward cat).
# 1. Equivalence at sp=2 of the code as it stands, both GDN exchanges (first: it also warms the caches).
# 2. Every setup in turn three times (no checkpointing), with the gradient sum after the backward
#    (reduce_gradients) and then during it (DDP with a summing hook); checkpointing, two rounds.
# 3. The sp=2 step by op and shape.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29590"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_equivalence 240 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,ulysses::projections
timed sp2_tp_nockpt_rounds 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections,context --warmup 3 --steps 4 --rounds 3 --no-checkpointing
timed sp2_tp_nockpt_ddp 100 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 3 --steps 4 --rounds 3 --no-checkpointing --grad-sync ddp
timed sp2_tp_ckpt_ddp 90 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 2 --steps 4 --rounds 2 --grad-sync ddp
timed sp2_prof_shapes 70 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --shapes --out "$RESULTS/prof_sp2_ulysses_shapes.txt"
note done
