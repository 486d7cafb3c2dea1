#!/usr/bin/env bash
# GPU batch AI (1 GPU, an H100), eleventh session: the ~4B graphed step at the tenth session's first graph commit
# (37f9c52, unpacked into _old37/ with `git archive 37f9c52 src | tar -x -C _old37`) and now, same machine:
# peak memory with checkpointing, and whether it fits without.
#   RESULTS=/tmp/resAI BUDGET_S=400 bash benchmarks/gpu/batch_ai.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
for code in old37 new; do
  if [[ $code == old37 ]]; then export PYTHONPATH=$PWD/_old37/src:$PWD:$HOME/gpu-b:$HOME/gpu-a; else export PYTHONPATH=$PWD/src:$PWD:$HOME/gpu-b:$HOME/gpu-a; fi
  timed bench_4b_ckpt_$code 90 python3 -m padfree.cli bench --device cuda --shape 4b --paths padfree_graphed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_ckpt_$code.json"
  timed bench_4b_nockpt_$code 90 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths padfree_graphed --steps 4 --warmup 2 --json "$RESULTS/bench_4b_nockpt_$code.json"
done
note done
