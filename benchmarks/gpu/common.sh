# Shared by the GPU batch scripts: environment, a deadline, and a logged, time-boxed runner.
# Source it from the repository root with RESULTS (a folder) and BUDGET_S (seconds) set.
export PYTHONPATH=$PWD/src:$PWD:$HOME/gpu-b:$HOME/gpu-a PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the lender's rule
export TOKENIZERS_PARALLELISM=false
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
versions() {
  nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$RESULTS/gpus.csv" 2>&1
  python3 -c "import torch, transformers, triton, fla; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, 'fla', fla.__version__)" > "$RESULTS/versions.txt" 2>&1
}
