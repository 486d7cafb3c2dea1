"""torchrun --nproc-per-node 2 repro_ulysses_fla.py MODE BACKEND [TOKENS]: two sharded bf16 training
steps of a 4-layer Qwen3.5-0.8B-shaped model; prints the loss or the error. On GPUs (NCCL) run it
with CUDA_LAUNCH_BLOCKING=1 to locate a fault; without CUDA it runs on gloo (a smoke test).

Knobs (environment variables) to isolate a fault under Ulysses, one component at a time:
  REPRO_CONV=torch|fla   the conv's backend, whatever BACKEND says
  REPRO_GDN=torch|fla    the gated delta rule's backend
  REPRO_WAIT=1           materialise every all-to-all output at once (a plain copy), so no lazy
                         collective result can reach a kernel that bypasses PyTorch's dispatcher
"""
import os
import sys
import traceback

import torch
import torch.distributed as dist

import padfree
import padfree.models.layers as layers
import padfree.parallel.ulysses as ulysses
from padfree.bench.shapes import shape_config
from padfree.loss import count_trained_tokens
from padfree.parallel import SequenceParallel, reduce_gradients, shard_batch
from padfree.tiny import _realistic_gates

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_sequence_parallel import make_row, to  # noqa: E402


def force_backend(fn, backend):
    def wrapper(*args, **kwargs):
        kwargs["backend"] = backend
        return fn(*args, **kwargs)

    return wrapper


if os.environ.get("REPRO_CONV"):
    layers.causal_conv1d = force_backend(layers.causal_conv1d, os.environ["REPRO_CONV"])
if os.environ.get("REPRO_GDN"):
    ulysses.chunk_gated_delta_rule = force_backend(ulysses.chunk_gated_delta_rule, os.environ["REPRO_GDN"])
if os.environ.get("REPRO_WAIT") == "1":
    for name in ("seq_to_heads", "heads_to_seq"):
        collective = getattr(ulysses, name)
        setattr(ulysses, name, lambda *a, _c=collective: _c(*a).clone())

mode, backend = sys.argv[1], sys.argv[2]
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
knobs = {k: v for k, v in os.environ.items() if k.startswith("REPRO_") or k == "CUDA_LAUNCH_BLOCKING"}
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
tag = f"rank {dist.get_rank()} {mode} {backend} {knobs}"
try:
    for step in range(2):
        model.zero_grad(set_to_none=True)
        loss = model(**to(shard_batch(batch, sp), device), num_items_in_batch=count_trained_tokens(batch["labels"])).loss
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"{tag} step {step} forward OK", flush=True)
        loss.backward()
        reduce_gradients(model, sp.group)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"{tag} step {step} local loss share {float(loss):.5f} OK", flush=True)
except Exception:
    traceback.print_exc()
    print(f"{tag} FAILED", flush=True)
    os._exit(1)
dist.destroy_process_group()
