#!/usr/bin/env bash
# GPU batch BM (1 GPU), eighteenth session: the conv kernels at explicit tiles, blocks and warps, and with a bf16 dz.
#   RESULTS=/tmp/resBM BUDGET_S=400 bash benchmarks/gpu/batch_bm.sh
set -u
source benchmarks/gpu/common.sh
versions
timed conv_variants 360 python3 benchmarks/gpu/bench_conv_variants.py --json "$RESULTS/conv_variants.json"
note done
