#!/usr/bin/env bash
# GPU batch BI (2 GPUs), seventeenth session, after BH:
#   RESULTS=/tmp/resBI BUDGET_S=540 bash benchmarks/gpu/batch_bi.sh
# BH: symmetric memory took sp=2 from 0.896 to 0.917 (same process); padfree's one-product matmul + reduce-scatter
# 277 -> 193 us, but its sum of three products (the projections' backward) only 690 -> 672 us: addmm(out=) into
# the peer's memory copies its input there first and cuBLAS reads it back over NVLink. Now the sum is made locally
# and the copy engine sends it while the rank multiplies its own rows.
# 1. The fused collectives alone (the new sum). 2. Their GPU test (its first run failed on the test's own leaf
# tensors). 3. sp=2 0.8B throughput, c10d against symmetric memory, captured, stream-timed. 4. A profile of the
# symmetric-memory step. 5. The captured sharded step's test.
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 2 --master-port 29613"
SP="benchmarks/bench_sequence_parallel.py"
timed fused_collectives 60 $R benchmarks/bench_fused_collectives.py --out "$RESULTS/fused_collectives.jsonl"
timed test_fused_collectives 90 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_fused_collectives.py
require_fla
timed sp2_tp_stream 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:symmetric_memory --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
timed prof_symm_trace 80 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses:symmetric_memory --cuda-graph --out "$RESULTS/prof_symm_graph.txt" --trace "$RESULTS/trace"
timed test_sp_graph 200 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
note done
