#!/usr/bin/env bash
# GPU batch W (1 GPU, an H100: `nvidia-h100-x1`), written in the ninth session for the next:
#   RESULTS=/tmp/resW BUDGET_S=560 bash benchmarks/gpu/batch_w.sh
# 1. The bench now draws its random weights on the GPU (padfree.bench.train_step.build_model, gate.py) and
#    reports the GPU-busy share of packed paths (tests/gpu/test_cuda_bench.py):
#    a tiny CUDA bench first, so a problem there costs seconds, not the call.
# 2. Batch V could not rank the fused norms and FLA's loss softmax against their eager baselines: the
#    host-bound 0.8B step moved by ~12% between runs. Three rounds, medians and same-round ratios.
# 3. The ~4B comparison of the norms with checkpointing, which timed out in batch V.
set -u
source benchmarks/gpu/common.sh
versions
require_fla
timed bench_tiny_cuda 120 python3 -m pytest -v -p no:cacheprovider tests/gpu/test_cuda_bench.py || exit 4
timed bench_08b_rounds 330 python3 -m padfree.cli bench --device cuda --shape 0.8b --fastest --rounds 3 --paths upstream_packed,padfree,padfree_eager_norms,padfree_torch_loss --steps 8 --warmup 3 --json "$RESULTS/bench_08b_rounds.json"
timed bench_4b_ckpt 200 python3 -m padfree.cli bench --device cuda --shape 4b --gradient-checkpointing --rounds 2 --paths padfree,padfree_eager_norms --steps 4 --warmup 2 --json "$RESULTS/bench_4b_ckpt.json"
note done
