"""torchrun --nproc-per-node 2 repro_ulysses_fla.py MODE BACKEND [TOKENS]: two sharded bf16 training
steps of a 4-layer Qwen3.5-0.8B-shaped model; prints the loss or the error. On GPUs (NCCL) run it
with CUDA_LAUNCH_BLOCKING=1 to locate a fault; without CUDA it runs on gloo (a smoke test)."""
import os
import sys
import traceback

import torch
import torch.distributed as dist

import padfree
from padfree.loss import count_trained_tokens
from padfree.parallel import SequenceParallel, reduce_gradients, shard_batch
from padfree.bench.shapes import shape_config
from padfree.tiny import _realistic_gates

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_sequence_parallel import make_row, to  # noqa: E402

mode, backend = sys.argv[1], sys.argv[2]
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
if torch.cuda.is_available():
    dist.init_process_group("nccl")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
else:
    dist.init_process_group("gloo")
    device = torch.device("cpu")
torch.manual_seed(0)
from transformers import Qwen3_5ForCausalLM

config = shape_config("0.8b")
config.num_hidden_layers, config.layer_types = 4, config.layer_types[:4]  # 3 GDN layers and 1 attention layer
with torch.device(device):
    model = Qwen3_5ForCausalLM(config)
_realistic_gates(model)
model = model.to(torch.bfloat16).train()
batch = make_row(tokens, 248320, seed=1)
sp = SequenceParallel(dist.group.WORLD, mode=mode)
padfree.patch(model, backend=backend, sequence_parallel=sp)
try:
    for step in range(2):
        model.zero_grad(set_to_none=True)
        loss = model(**to(shard_batch(batch, sp), device), num_items_in_batch=count_trained_tokens(batch["labels"])).loss
        loss.backward()
        reduce_gradients(model, sp.group)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"rank {dist.get_rank()} {mode} {backend} step {step} local loss share {float(loss):.5f} OK", flush=True)
except Exception:
    traceback.print_exc()
    print(f"rank {dist.get_rank()} {mode} {backend} FAILED", flush=True)
    os._exit(1)
dist.destroy_process_group()
