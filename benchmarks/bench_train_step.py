"""Training-step throughput, side by side in one process: upstream padded, upstream packed, padfree.

Each path trains the same model shape from the same random init on the same samples with the same
settings (dtype, activation checkpointing, fused AdamW) and reports real (non-padding) tokens/s,
MFU (6 * params * tokens/s over the GPU's dense bf16 peak), peak memory and slot fill.

  python benchmarks/bench_train_step.py --shape 0.8b --device cuda --row-tokens 8192 --steps 6
  python benchmarks/bench_train_step.py --shape tiny --device cpu --row-tokens 2048 --steps 4
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

import padfree
from padfree.corpus import lognormal_lengths
from padfree.packing import pack
from shapes import shape_config

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def make_batches(mode, samples, row_tokens, vocab, device):
    """Per-step batches and their real token counts for `mode`."""
    if mode == "upstream_padded":  # the HF Trainer default: batches of 4 samples, padded to the longest
        out = []
        for i in range(0, len(samples), 4):
            group = samples[i : i + 4]
            width = max(len(s) for s in group)
            ids = torch.zeros(len(group), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(group):
                ids[r, : len(s)], mask[r, : len(s)] = s, 1
            labels = ids.masked_fill(mask == 0, -100)
            out.append(({"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), ids.numel()))
        return out
    plan = pack([len(s) for s in samples], row_tokens, seed=0)
    out = []
    for row in plan.rows:
        batch = padfree.collate([{"input_ids": samples[i]} for i in row], pad_to=row_tokens)
        real = sum(len(samples[i]) for i in row)
        out.append((batch, real, row_tokens))
    return out


def run_mode(mode, args, config, samples, device, dtype):
    torch.manual_seed(0)
    from transformers import Qwen3_5ForCausalLM

    model = Qwen3_5ForCausalLM(config).to(device=device, dtype=dtype)
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "padfree":
        padfree.patch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    batches = make_batches(mode, samples, args.row_tokens, config.vocab_size, device)
    steps = min(args.steps + args.warmup, len(batches))
    real_tokens, slots, elapsed = 0, 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps):
        batch, real, slot = batches[step]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            elapsed += time.perf_counter() - start
            real_tokens += real
            slots += slot
    params = sum(p.numel() for p in model.parameters())
    peak = _peak_flops(device)
    tps = real_tokens / elapsed
    result = {
        "mode": mode,
        "real_tokens_per_s": round(tps, 1),
        "slot_fill": round(real_tokens / slots, 4),
        "timed_steps": steps - args.warmup,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "mfu": round(6 * params * tps / peak, 4) if peak else None,
        "params": params,
        "final_loss": round(float(loss), 4),
    }
    del model, optimizer, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=["tiny", "0.8b", "4b"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--row-tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--median-len", type=float, default=600.0, help="lognormal sample-length median")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--modes", default="upstream_padded,upstream_packed,padfree")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = shape_config(args.shape)
    n = max(64, (args.steps + args.warmup + 2) * args.row_tokens // int(args.median_len))
    lengths = lognormal_lengths(n, median=args.median_len, sigma=1.0, max_len=args.row_tokens, seed=0)
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, config.vocab_size, (int(L),), generator=gen) for L in lengths]
    results = []
    for mode in args.modes.split(","):
        try:
            results.append(run_mode(mode, args, config, samples, device, dtype))
        except Exception as exc:  # e.g. upstream refusing packed rows without FLA: record, keep going
            results.append({"mode": mode, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(results[-1]), flush=True)
    base = {r["mode"]: r.get("real_tokens_per_s") for r in results}
    if base.get("padfree"):
        for mode in ("upstream_padded", "upstream_packed"):
            if base.get(mode):
                print(f"padfree / {mode}: {base['padfree'] / base[mode]:.2f}x")
    meta = {"shape": args.shape, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype), "row_tokens": args.row_tokens, "checkpointing": args.checkpointing,
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
