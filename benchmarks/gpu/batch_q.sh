#!/usr/bin/env bash
# GPU batch Q (1 GPU, an H100: issue #7's targets name one), eighth session, run from the repository root:
#   RESULTS=/tmp/res BUDGET_S=470 bash benchmarks/gpu/batch_q.sh
# The 0.8B bench with each path at its fastest (upstream packed, padfree with upstream's eager norms,
# padfree with FLA's fused norms), then the longest 0.8B row that trains on one 80 GB card.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_08b_fastest 300 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --paths upstream_packed,padfree_eager_norms,padfree --steps 8 --warmup 3 --json "$RESULTS/bench_08b_h100.json"
timed long_08b_1gpu 300 torchrun --nproc-per-node 1 --master-port 29571 benchmarks/bench_sequence_parallel.py --shape 0.8b --out "$RESULTS/long_08b_h100.jsonl" --stages longest_row --long-start 131072 --long-setups single --backend fla
note done
