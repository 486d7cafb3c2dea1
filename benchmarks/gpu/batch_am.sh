#!/usr/bin/env bash
# GPU batch AM (2 GPUs), twelfth session:
#   RESULTS=/tmp/resAM BUDGET_S=560 bash benchmarks/gpu/batch_am.sh
# Batch AL found NCCL's all-to-all kernels taking 200 of 555 ms of the Ulysses sp=2 step's kernel time (144
# calls, ~44 GB/s). Here:
# 1. each exchange alone on the step's shapes (bench_exchange.py): NCCL's all-to-all, the pair all-gather,
#    all-reduce; with NCCL's defaults and with 32 P2P channels;
# 2. per-GPU throughput at sp=2 vs one GPU: Ulysses with the pair exchange (the new default at 2 ranks), with
#    NCCL's all-to-all, and context parallelism; with and without activation checkpointing.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29583"
SP="benchmarks/bench_sequence_parallel.py"
EXCHANGE_LABEL=default timed exchange_default 90 $R benchmarks/gpu/bench_exchange.py --out "$RESULTS/exchange.jsonl"
EXCHANGE_LABEL=p2p32 NCCL_MIN_P2P_NCHANNELS=32 NCCL_MAX_P2P_NCHANNELS=32 NCCL_NCHANNELS_PER_PEER=32 \
  timed exchange_p2p32 90 $R benchmarks/gpu/bench_exchange.py --out "$RESULTS/exchange.jsonl"
timed sp2_tp_ckpt 220 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:all_to_all,context --warmup 3
timed sp2_tp_nockpt 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:all_to_all,context --warmup 3 --no-checkpointing
save_kernel_cache "$RESULTS/kernel-cache.tgz"
note done
