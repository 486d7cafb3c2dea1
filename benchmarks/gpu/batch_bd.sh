#!/usr/bin/env bash
# GPU batch BD (2 GPUs), sixteenth session, after BB and BC:
#   RESULTS=/tmp/resBD BUDGET_S=540 bash benchmarks/gpu/batch_bd.sh
# BC's profile of the gather_scatter step: NCCL ran every all-gather and reduce-scatter (16 MB a rank, 48 each a
# step) with its LL protocol at ~100 GB/s, 16 ms of the 255 ms step. Does NCCL's Simple (or LL128) protocol
# move them faster? Three processes, each with its own one-GPU baseline: NCCL's choice, NCCL_PROTO=Simple,
# NCCL_PROTO=LL128; then a profile under the best guess (Simple), and NCCL's own log of its choices.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29600"
SP="benchmarks/bench_sequence_parallel.py"
ARGS="--shape 0.8b --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses::gather_scatter:gather_scatter --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing"
timed sp2_default 100 env NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,TUNING $R $SP $ARGS --out "$RESULTS/sp2_default.jsonl"
timed sp2_simple 100 env NCCL_PROTO=Simple $R $SP $ARGS --out "$RESULTS/sp2_simple.jsonl"
timed sp2_ll128 100 env NCCL_PROTO=LL128 $R $SP $ARGS --out "$RESULTS/sp2_ll128.jsonl"
timed prof_sp2_simple 80 env NCCL_PROTO=Simple $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses::gather_scatter:gather_scatter --cuda-graph --out "$RESULTS/prof_sp2_gs_simple.txt"
note done
