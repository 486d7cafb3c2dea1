#!/usr/bin/env bash
# GPU batch AP (2 GPUs), twelfth session, the last ~300 s of device time:
#   RESULTS=/tmp/resAP BUDGET_S=300 bash benchmarks/gpu/batch_ap.sh
# 1. AN's sp=2 Ulysses step without checkpointing spent ~43 ms in copies (919 calls) that the one-GPU step
#    does not have; name them by input shape.
# 2. AN's 0.902 (Ulysses, c10d, no checkpointing) again, in two processes with the setups in both orders.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
R="torchrun --nproc-per-node 2 --master-port 29586"
SP="benchmarks/bench_sequence_parallel.py"
timed sp2_tp_nockpt_a 110 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:functional,context --warmup 3 --no-checkpointing  # twelfth session's run (before --rounds)
timed sp2_prof_shapes 90 $R benchmarks/profile_train_step.py --shape 0.8b --row-tokens 16384 --backend auto --warmup 3 --sp-mode ulysses --shapes --out "$RESULTS/prof_sp2_ulysses_shapes.txt"
timed sp2_tp_nockpt_b 90 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses:functional,ulysses --warmup 3 --no-checkpointing
# After the twelfth session's runs (next session): the same with the setups in turn 3 times in one process
timed sp2_tp_nockpt_rounds 200 $R $SP --shape 0.8b --out "$RESULTS/sp2.jsonl" --stages throughput --tokens-per-gpu 16384 --backend auto --modes ulysses,ulysses:functional,context --warmup 3 --steps 4 --rounds 3 --no-checkpointing
note done
