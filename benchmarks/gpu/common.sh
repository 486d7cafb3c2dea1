# Shared by the GPU batch scripts: environment, a deadline, and a logged, time-boxed runner.
# Source it from the repository root with RESULTS (a folder) and BUDGET_S (seconds) set.
export PYTHONPATH=$PWD/src:$PWD:$HOME/gpu-b:$HOME/gpu-a PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the lender's rule
export TOKENIZERS_PARALLELISM=false
# Kernel caches in the checkout, not $HOME: a fresh machine spends 2-3 minutes per FLA mode in
# Triton autotuning (FLA keeps the winners on disk, FLA_CACHE_RESULTS) and tilelang compiles. The
# same machine keeps them between calls; save_kernel_cache says what can travel to the next one.
export TRITON_CACHE_DIR=$PWD/.kernel-cache/triton TILELANG_CACHE_DIR=$PWD/.kernel-cache/tilelang
mkdir -p "$TRITON_CACHE_DIR" "$TILELANG_CACHE_DIR"
mkdir -p "$RESULTS"
DEADLINE=$(( $(date +%s) + BUDGET_S ))
note() { echo "[$(date +%T)] $*" | tee -a "$RESULTS/timeline.txt"; }
# timed NAME MAX_S COMMAND...: run with at most MAX_S seconds (less if the deadline is nearer), log to NAME.log
timed() {
  local name=$1 max=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  if (( left < 20 )); then note "$name skipped: deadline"; return 124; fi
  (( left < max )) && max=$left
  note "$name start (limit ${max}s): $*"
  timeout -k 5 "$max" "$@" > "$RESULTS/$name.log" 2>&1
  local rc=$?
  note "$name rc=$rc"
  return $rc
}
# require_fla: stop the batch (exit 3) where FLA is not importable: a fresh machine needs .gpu-a first.
require_fla() { python3 -c "import fla" || { note "FLA missing: install .gpu-a first"; exit 3; }; }
versions() {
  nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$RESULTS/gpus.csv" 2>&1
  python3 -c "import torch, transformers, triton, fla; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" > "$RESULTS/versions.txt" 2>&1
}
# The kernel seed: .kernel-seed/kernel-cache.tgz (git-ignored; carry it with .gpu-b) is unpacked into
# .kernel-cache/ without overwriting what a warm machine already has. It holds what save_kernel_cache
# wrote on an earlier machine: tilelang's compiled kernels, and Triton's autotuning winners
# (*.autotune.json; FLA autotunes with cache_results, FLA_CACHE_RESULTS defaults to 1). With the
# winners known, a fresh machine compiles each FLA kernel once instead of once per candidate config:
# the sixth session lost most of two 560 s batches on fresh machines, most likely to that search.
if [[ -f .kernel-seed/kernel-cache.tgz ]]; then
  tar xzf .kernel-seed/kernel-cache.tgz --skip-old-files 2>/dev/null
fi
# save_kernel_cache FILE: tar the seed (above) into FILE (under $OUT); sizes go to RESULTS. Triton's
# compiled kernels stay behind: 378-469 MB, over the 16 MiB a file returned from $OUT may hold and
# the room the .gpu-b wheels leave in a 64 MiB carry. A warm machine keeps the whole cache anyway.
save_kernel_cache() {
  local file=$1
  du -sh .kernel-cache/* > "$RESULTS/kernel_cache_size.txt" 2>&1
  { find .kernel-cache/tilelang -type f; find .kernel-cache/triton -name '*.autotune.json'; } > "$RESULTS/kernel_seed_files.txt"
  tar czf "$file" -T "$RESULTS/kernel_seed_files.txt" && du -h "$file" >> "$RESULTS/kernel_cache_size.txt"
}
