#!/usr/bin/env bash
# GPU batch BH (2 GPUs), seventeenth session:
#   RESULTS=/tmp/resBH BUDGET_S=540 bash benchmarks/gpu/batch_bh.sh
# collectives="symmetric_memory" (padfree.parallel.fused): the gather_scatter exchange's all-gathers and
# reduce-scatters over PyTorch's symmetric memory, pipelined with their matmuls (the probe this session, at the
# 0.8B sp=2 sizes, captured: all-gather + 3 matmuls 573 -> 445 us with PyTorch's fused op; matmul +
# reduce-scatter 276 -> 252 us with PyTorch's, padfree's own writes the products into the peer's memory).
# 1. The fused collectives alone against NCCL (now with padfree's matmul + reduce-scatter).
# 2. Their GPU test against NCCL and an fp32 reference.
# 3. The bf16 equivalence stage against the fp32 unsharded model: the default (c10d gather_scatter at this shape,
#    owed since the sixteenth session) and symmetric memory.
# 4. sp=2 0.8B per-GPU throughput, captured, stream-timed, same process: c10d against symmetric memory.
# 5. The captured sharded step's test (now with a symmetric-memory setup).
set -u
source benchmarks/gpu/common.sh
versions
R="torchrun --nproc-per-node 2 --master-port 29612"
SP="benchmarks/bench_sequence_parallel.py"
timed fused_collectives 60 $R benchmarks/bench_fused_collectives.py --out "$RESULTS/fused_collectives.jsonl"
timed test_fused_collectives 90 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_fused_collectives.py
require_fla
timed sp2_equivalence 120 $R $SP --shape 0.8b --out "$RESULTS/sp2_eq.jsonl" --stages equivalence --eq-tokens 8192 --backend auto --modes ulysses,ulysses:symmetric_memory
timed sp2_tp_stream 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:symmetric_memory --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph --stream-timing
timed test_sp_graph 200 python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
note done
