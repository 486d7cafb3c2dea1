#!/usr/bin/env bash
# GPU batch BA (2 GPUs), fifteenth session, after AZ:
#   RESULTS=/tmp/resBA BUDGET_S=540 bash benchmarks/gpu/batch_ba.sh
# The gradient sum during the backward now runs on a communicator of its own (AX's profile: on the layers'
# communicator its bucket all-reduces queued ahead of the backward's all-to-alls, whose kernel time rose from
# 9.2 to 12.1 ms). 1. the captured sharded step's test; 2. sp=2 throughput as a training loop runs it, the sum
# during the backward vs after it, 0.8B; 3. its profile; 4. the ~4B shape.
# The communicator of its own was reverted after this run (the all-to-alls' kernel time fell back to 9.1 ms, the
# throughput did not move): the committed reducer sums on the layers' group, as in AX and AZ.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29598"
SP="benchmarks/bench_sequence_parallel.py"
timed test_sp_graph 200 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_stream 110 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses@after --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
timed prof_sp2_graph 60 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --cuda-graph --out "$RESULTS/prof_sp2_ulysses_graph.txt"
timed sp2_tp_stream_4b 150 $R $SP --shape 4b --out "$RESULTS/sp2_4b.jsonl" --stages throughput --tokens-per-gpu 8192 --backend auto --modes ulysses,ulysses@after --warmup 3 --steps 4 --rounds 2 --no-checkpointing --cuda-graph --stream-timing
note done
