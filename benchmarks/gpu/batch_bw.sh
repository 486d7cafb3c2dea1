#!/usr/bin/env bash
# GPU batch BW (1 GPU), twentieth session, after BV (whose tests were cut at 260 s by TileLang's first compiles
# of FlashQLA for the tests' head counts): the GDN and CUDA-graph GPU tests again, with BV's kernel cache; then
# the graphed 0.8b step's A/B on rows of a few long documents (median length 6,000).
#   RESULTS=/tmp/resBW BUDGET_S=560 bash benchmarks/gpu/batch_bw.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed tests 420 python3 -m pytest -q -p no:cacheprovider -rs --durations=0 tests/gpu/test_cuda_ops.py tests/gpu/test_cuda_graph.py
timed ab_long_docs 200 python3 benchmarks/gpu/ab_graphed_flash_qla.py --shape 0.8b --median-len 6000 --rounds 1 --json "$RESULTS/ab_long_docs.json"
save_kernel_cache "${OUT:-/tmp}/kernel-cache.tgz"
