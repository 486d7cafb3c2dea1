#!/usr/bin/env bash
# GPU batch AN (2 GPUs), twelfth session:
#   RESULTS=/tmp/resAN BUDGET_S=560 bash benchmarks/gpu/batch_an.sh
# After AM (NCCL's all-to-all alone runs at 190-240 GB/s; in the step it is mostly waiting, and the functional
# collectives' tensor subclass costs host time):
# 1. equivalence at sp=2 (bf16 vs fp32 unsharded) of the c10d collectives and Ulysses' send buffer from the
#    projection weights (both new), Ulysses and context;
# 2. per-GPU throughput vs one GPU, c10d (default) against the functional collectives in the same process,
#    with and without checkpointing;
# 3. the Ulysses step's kernels and host time without checkpointing.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29584"
SP="benchmarks/bench_sequence_parallel.py"
MODES=ulysses,ulysses:functional,context,context:functional
timed sp2_equivalence 240 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,context
timed sp2_tp_nockpt 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes $MODES --warmup 3 --no-checkpointing
timed sp2_tp_ckpt 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes $MODES --warmup 3
timed sp2_profile_ulysses 90 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 4 --sp-mode ulysses --out "$RESULTS/prof_sp2_ulysses_nockpt.txt"
note done
