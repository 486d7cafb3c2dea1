#!/usr/bin/env bash
# GPU batch K (4 GPUs, run from the repository root; written for the session after the fifth): the
# degree-4 runs of issue #8 still missing after the fifth session, and FLA throughput at degree 4
# after the Ulysses index_select fix.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_k.sh
# First the mix of data and sequence parallelism on NCCL at the 4 GPUs lent (dp 2 x sp 2; the issue's
# dp 2 x sp 4 needs 8): `padfree train` on the embedded tiny model in fp32 against one process over the
# same rows (as tests/test_train_distributed.py does on gloo); compare the two metrics.jsonl.
# The 1-GPU longest row of the ~4B shape is known (131,072 on an H200, fifth session), so only the
# sharded search runs (--long-setups sp); --long-start counts tokens per GPU.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 4 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
T="-m padfree.cli train --max-tokens 256 --max-steps 6 --save-every 0 --dtype float32 --cache-dir $RESULTS/cache"
timed train_1proc 90 env CUDA_VISIBLE_DEVICES=0 python3 $T --grad-accum 2 --output-dir "$RESULTS/train_1proc"
timed train_dp2sp2 120 torchrun --nproc-per-node 4 --master-port 29592 $T --grad-accum 1 --sp-degree 2 --output-dir "$RESULTS/train_dp2sp2"
timed sp4_08b_tp_fla 150 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_long 180 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages longest_row --long-start 65536 --long-mode context --long-setups sp
timed sp4_4b_tp_fla 200 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
note done
