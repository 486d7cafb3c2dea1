#!/usr/bin/env bash
# GPU batch BG (2 GPUs), sixteenth session, after BF:
#   RESULTS=/tmp/resBG BUDGET_S=300 bash benchmarks/gpu/batch_bg.sh
# BF: the step's all-gathers and reduce-scatters take as long inside the step as alone (160 us for 32 MiB a rank:
# ~200 GB/s each way, with NCCL's 24 channels). 1. The same collectives alone under NCCL settings that may move
# more: 32 channels, a 16 MiB buffer, both. 2. sp=2 0.8B per-GPU throughput (captured, stream-timed, the
# default exchange) as NCCL chooses and with 32 channels: two processes, each with its own one-GPU baseline.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 2 --master-port 29603"
C="benchmarks/bench_collectives.py"
timed coll_default 40 $R $C --out "$RESULTS/coll_default.jsonl"
timed coll_ch32 40 env NCCL_MIN_NCHANNELS=32 NCCL_MAX_NCHANNELS=32 $R $C --out "$RESULTS/coll_ch32.jsonl"
timed coll_buf16 40 env NCCL_BUFFSIZE=16777216 $R $C --out "$RESULTS/coll_buf16.jsonl"
timed coll_ch32_buf16 40 env NCCL_MIN_NCHANNELS=32 NCCL_MAX_NCHANNELS=32 NCCL_BUFFSIZE=16777216 $R $C --out "$RESULTS/coll_ch32_buf16.jsonl"
require_fla
SP="benchmarks/bench_sequence_parallel.py"
ARGS="--shape 0.8b --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing"
timed sp2_default 90 $R $SP $ARGS --out "$RESULTS/sp2_default.jsonl"
timed sp2_ch32 90 env NCCL_MIN_NCHANNELS=32 NCCL_MAX_NCHANNELS=32 $R $SP $ARGS --out "$RESULTS/sp2_ch32.jsonl"
note done
