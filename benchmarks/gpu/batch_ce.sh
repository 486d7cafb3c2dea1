#!/usr/bin/env bash
# GPU batch CE (2 GPUs, after CD on the same machine), twenty-first session: `padfree train` at the 0.8B shape on
# random text, one after another on one machine: the graphed trainer on one GPU (8,192-token rows), and under
# torchrun on two GPUs with twice the row length (the same tokens per GPU): graphed Ulysses (c10d and symmetric-memory
# collectives) and the eager FSDP2 sp=2 trainer. tokens/s from each run's metrics.jsonl (steps 4 on).
#   RESULTS=/tmp/resCE BUDGET_S=560 bash benchmarks/gpu/batch_ce.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
[[ -d /tmp/run08 ]] || timed make_data 120 python3 benchmarks/make_synthetic_run.py --shape 0.8b --out /tmp/run08 --samples 3000
TRAIN="-m padfree.cli train --model /tmp/run08/model --tokenizer src/padfree/data/tokenizer --data /tmp/run08/data.jsonl --max-steps 16 --log-every 4 --save-every 0 --overwrite"
run() {  # run NAME MAX_S ARGS...: a padfree train run; its metrics to RESULTS
  local name=$1 max=$2; shift 2
  timed "$name" "$max" "$@" --output-dir "/tmp/$name"
  cp "/tmp/$name/metrics.jsonl" "$RESULTS/${name}_metrics.jsonl" 2>/dev/null
}
run graphed_1gpu 100 python3 $TRAIN --max-tokens 8192 --cuda-graph
run graphed_sp2 110 torchrun --nproc-per-node 2 --master-port 29521 $TRAIN --max-tokens 16384 --cuda-graph --sp-degree 2
run graphed_sp2_symm 110 torchrun --nproc-per-node 2 --master-port 29522 $TRAIN --max-tokens 16384 --cuda-graph --sp-degree 2 --sp-collectives symmetric_memory
run eager_sp2 100 torchrun --nproc-per-node 2 --master-port 29523 $TRAIN --max-tokens 16384 --sp-degree 2
