#!/usr/bin/env bash
# GPU batch AU (2 GPUs), fourteenth session:
#   RESULTS=/tmp/resAU BUDGET_S=560 bash benchmarks/gpu/batch_au.sh
# The sharded (Ulysses) step captured in CUDA graphs (padfree.CudaGraphTrainStep under sequence parallelism):
# 1. correctness: replayed sharded steps train what eager sharded steps train (2 GPUs, NCCL), and the one-GPU
#    captured step still does after the fixed-shape row's changes;
# 2. sp=2 per-GPU throughput against one GPU, every setup captured, rounds in one process; then the eager
#    setups (batch AT's run: the loss no longer syncs mid-step);
# 3. profiles of the captured sp=2 step and the captured one-GPU step at the same tokens per GPU.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29592"
SP="benchmarks/bench_sequence_parallel.py"
MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
# three captured setups keep three graph pools of ~30 GiB each (no checkpointing): both exchanges on an H200 only
MODES="ulysses,ulysses::projections"; (( MEM_MIB < 100000 )) && MODES="ulysses"
timed test_sp_graph 200 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_sp_graph.py
timed sp2_tp_graph 150 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes $MODES --warmup 3 --steps 4 --rounds 3 --no-checkpointing --cuda-graph
timed prof_sp2_graph 70 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --cuda-graph --out "$RESULTS/prof_sp2_ulysses_graph.txt"
timed prof_1_graph 60 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --cuda-graph --out "$RESULTS/prof_1gpu_graph.txt"
timed sp2_tp_eager 120 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses::projections --warmup 3 --steps 4 --rounds 3 --no-checkpointing
timed test_graph 120 python3 -m pytest -x -q -p no:cacheprovider tests/gpu/test_cuda_graph.py
note done
