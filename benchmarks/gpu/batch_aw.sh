#!/usr/bin/env bash
# GPU batch AW (2 GPUs), fourteenth session, after AV:
#   RESULTS=/tmp/resAW BUDGET_S=440 bash benchmarks/gpu/batch_aw.sh
# Ulysses' GDN layers with the "inputs" exchange now return their output as a reduce-scatter of each rank's
# heads' share of out_proj (no all-to-all back, no transposing copies).
# 1. sp=2 per-GPU throughput, every setup captured, the same documents on both sides (as AV's run).
# 2. Equivalence at sp=2 (bf16 sharded vs fp32 unsharded) of both exchanges.
# 3. The captured sharded step's test, now closing its graphs before the process group goes (AV: every step
#    passed, then the processes hung in their teardown).
# 4. The eager setups on the same documents.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29594"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_tp_graph 130 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 3 --steps 3 --rounds 3 --no-checkpointing --cuda-graph
timed sp2_equivalence 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,ulysses::projections
timed test_sp_graph 130 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_eager 90 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 3 --steps 3 --rounds 2 --no-checkpointing
note done
