#!/usr/bin/env bash
# GPU batch A (4 GPUs, run from the repository root): one- and two-GPU work, in parallel lanes.
#   RESULTS=/tmp/res BUDGET_S=560 bash benchmarks/gpu/batch_a.sh
# Lane GPU3 first warms the FLA / tilelang caches (the profile of one training step), so the
# other processes find compiled kernels; then:
#   GPU0     padfree train, 0.8B shape, 1 GPU  -> gated delta op bench -> loss bench -> varlen_attn test
#   GPU1,2   padfree train, 0.8B shape, torchrun dp=2 -> sequence-parallel bench at sp=2
#   GPU3     padfree bench 0.8b (upstream padded / packed vs padfree) -> profile under bf16-mixed
set -u
source benchmarks/gpu/common.sh
versions
TRAIN="-m padfree.cli train --model /tmp/run08/model --tokenizer src/padfree/data/tokenizer --data /tmp/run08/data.jsonl --max-tokens 8192 --max-steps 40 --log-every 5 --save-every 0 --overwrite"

(CUDA_VISIBLE_DEVICES=0 timed make_data 200 python3 benchmarks/make_synthetic_run.py --shape 0.8b --out /tmp/run08 --samples 3000) &
CUDA_VISIBLE_DEVICES=3 timed profile_bf16 300 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --out "$RESULTS/profile_bf16.txt"
wait

(
  CUDA_VISIBLE_DEVICES=0 timed train_1gpu 240 python3 $TRAIN --output-dir /tmp/train1
  cp /tmp/train1/metrics.jsonl "$RESULTS/train_1gpu_metrics.jsonl"
  CUDA_VISIBLE_DEVICES=0 timed gated_delta_bench 150 python3 benchmarks/bench_gated_delta.py --device cuda --tokens 8192 --dtype bf16 --compile --state-scan scan --rounds 5 --json "$RESULTS/gated_delta.json"
  CUDA_VISIBLE_DEVICES=0 timed loss_bench 90 python3 benchmarks/bench_loss.py --device cuda --T 8192 --repeats 5 --with-fla --skip-full
  CUDA_VISIBLE_DEVICES=0 timed varlen_attn_test 60 python3 -m pytest -q tests/ops/test_attention.py -k "torch_varlen_attn_more_keys"
) &
(
  CUDA_VISIBLE_DEVICES=1,2 timed train_2gpu 300 torchrun --nproc-per-node 2 --master-port 29511 $TRAIN --output-dir /tmp/train2
  cp /tmp/train2/metrics.jsonl "$RESULTS/train_2gpu_metrics.jsonl"
  CUDA_VISIBLE_DEVICES=1,2 timed sp2 400 torchrun --nproc-per-node 2 --master-port 29512 benchmarks/bench_sequence_parallel.py --out "$RESULTS/sp2.jsonl" --eq-tokens 4096 --tokens-per-gpu 16384
) &
(
  CUDA_VISIBLE_DEVICES=3 timed bench_08b 330 python3 -m padfree.cli bench --shape 0.8b --device cuda --row-tokens 8192 --steps 4 --warmup 2 --json "$RESULTS/bench_08b.json"
  CUDA_VISIBLE_DEVICES=3 timed profile_mixed 90 python3 benchmarks/profile_train_step.py --shape 0.8b --row-tokens 8192 --precision bf16-mixed --out "$RESULTS/profile_mixed.txt"
) &
wait
note done
