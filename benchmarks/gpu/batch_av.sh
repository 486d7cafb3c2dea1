#!/usr/bin/env bash
# GPU batch AV (2 GPUs), fourteenth session, after AU:
#   RESULTS=/tmp/resAV BUDGET_S=560 bash benchmarks/gpu/batch_av.sh
# 1. The conv's split q, k, v outputs (new kernels): tests/gpu/test_cuda_conv_kernel.py, then the sharded
#    captured step's test with progress lines (AU's run ended at its 200 s limit with nothing printed).
# 2. sp=2 per-GPU throughput, every setup captured, both sides training the same documents (a sharded row
#    joins two one-GPU rows): the ratio without AU's row-content difference.
# 3. A/B of the conv's split outputs in one process, captured one-GPU steps at 8,192 tokens.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29593"
SP="benchmarks/bench_sequence_parallel.py"
timed conv_tests 150 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_conv_kernel.py
timed sp2_tp_graph 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 3 --steps 3 --rounds 3 --no-checkpointing --cuda-graph
timed ab_conv_split 120 python3 benchmarks/gpu/ab_conv_split.py --shape 0.8b --row-tokens 8192 --json "$RESULTS/ab_conv_split.json"
timed test_sp_graph 270 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
note done
