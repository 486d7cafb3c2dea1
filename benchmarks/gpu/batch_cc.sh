#!/usr/bin/env bash
# GPU batch CC (1 GPU), twentieth session, after the commit 258c1ea: the GDN GPU tests once more on the final
# fla_backend (an ImportError guard added after BW), then the graphed 0.8b step's A/B (FLA's own vs FlashQLA) on
# rows between BV's and BW's (median length 2,000) and on BW's long documents again.
#   RESULTS=/tmp/resCC BUDGET_S=560 bash benchmarks/gpu/batch_cc.sh
set -u
source benchmarks/gpu/common.sh
require_fla
versions
timed tests 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_cuda_ops.py
A="python3 benchmarks/gpu/ab_graphed_flash_qla.py --shape 0.8b --rounds 1"
timed ab_mid_docs 170 $A --median-len 2000 --json "$RESULTS/ab_mid_docs.json"
timed ab_long_docs 170 $A --median-len 6000 --json "$RESULTS/ab_long_docs.json"
