#!/usr/bin/env bash
# GPU batch AQ (2 GPUs), thirteenth session, first call on a fresh machine:
#   RESULTS=/tmp/resAQ BUDGET_S=560 bash benchmarks/gpu/batch_aq.sh
# 1. The conv kernels after the twelfth session's refactor into shared Triton helpers: their first compile
#    on a GPU (GPU 1), while GPU 0 names the 0.8b one-GPU step's small kernels by input shape (batch AK's
#    first item, never run).
# 2. The sp=2 Ulysses step with the send buffer from one bmm (twelfth session's last change, unmeasured):
#    the copies by shape, then every setup in turn three times in one process.
# 3. Equivalence at sp=2 (bf16 vs fp32 unsharded) of this code, with what deadline is left.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29587"
SP="benchmarks/bench_sequence_parallel.py"
( export CUDA_VISIBLE_DEVICES=1; timed conv_tests 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py ) &
( export CUDA_VISIBLE_DEVICES=0; timed prof_eager_shapes 150 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --shapes --out "$RESULTS/prof_eager_shapes.txt" )
wait
timed sp2_prof_shapes 100 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --shapes --out "$RESULTS/prof_sp2_ulysses_shapes.txt"
timed sp2_tp_nockpt_rounds 200 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:functional,context --warmup 3 --steps 4 --rounds 3 --no-checkpointing
timed sp2_equivalence 300 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,context
note done
