#!/usr/bin/env bash
# GPU batch AH (1 GPU, an H100), eleventh session, after batch AG: in AG the ~4B graphed step no longer fit
# without checkpointing (the tenth session: 61.7 GiB) and took 37.4 GiB with it (tenth: 33.1). Each conv alone,
# one process each, then the GPU tests AG ran out of time for.
#   RESULTS=/tmp/resAH BUDGET_S=575 bash benchmarks/gpu/batch_ah.sh
set -u
source benchmarks/gpu/common.sh
versions
require_fla
for path in padfree_graphed_fla_conv padfree_graphed; do
  timed bench_4b_$path 100 python3 -m padfree.cli bench --device cuda --shape 4b --no-gradient-checkpointing --paths $path --steps 4 --warmup 2 --json "$RESULTS/bench_4b_$path.json"
done
timed model_tests 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_models.py tests/gpu/test_cuda_ops.py
timed graph_tests 170 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_graph.py tests/gpu/test_cuda_train_graph.py
note done
