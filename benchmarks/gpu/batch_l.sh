#!/usr/bin/env bash
# GPU batch L (4 GPUs, run from the repository root; sixth session): batch K again. Its first run
# landed on a fresh machine without FLA (the device tool had released the warm one), so the FLA runs
# failed and its results archive (dataset cache included) was over the 16 MiB a returned file may hold.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_l.sh
# Issue #8 at degree 4 (the most GPUs lent): dp 2 x sp 2 `padfree train` on NCCL against one process
# over the same rows (fp32, embedded tiny model); per-GPU FLA throughput at 16,384 tokens per GPU for
# both shapes after the Ulysses index_select fix; the ~4B shape's longest row at sp=4 (context, FLA;
# every length that trains is written to the JSONL as it passes, so a cut run keeps what it found).
set -u
source benchmarks/gpu/common.sh
versions
python3 -c "import fla" || { note "FLA missing: install .gpu-a first"; exit 3; }
R="torchrun --nproc-per-node 4 --master-port 29591"
SP="benchmarks/bench_sequence_parallel.py"
T="-m padfree.cli train --max-tokens 256 --max-steps 6 --save-every 0 --dtype float32 --cache-dir /tmp/padfree-cache"
timed train_1proc 60 env CUDA_VISIBLE_DEVICES=0 python3 $T --grad-accum 2 --output-dir /tmp/train_1proc
timed train_dp2sp2 90 torchrun --nproc-per-node 4 --master-port 29592 $T --grad-accum 1 --sp-degree 2 --output-dir /tmp/train_dp2sp2
cp /tmp/train_1proc/metrics.jsonl "$RESULTS/train_1proc.metrics.jsonl"
cp /tmp/train_dp2sp2/metrics.jsonl "$RESULTS/train_dp2sp2.metrics.jsonl"
timed sp4_08b_tp_fla 200 $R $SP --shape 0.8b --out "$RESULTS/sp4_08b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_tp_fla 180 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages throughput --tokens-per-gpu 16384 --backend fla --modes ulysses,context --warmup 3
timed sp4_4b_long 150 $R $SP --shape 4b --out "$RESULTS/sp4_4b.jsonl" --stages longest_row --long-start 65536 --long-mode context --long-setups sp --backend fla
note done
