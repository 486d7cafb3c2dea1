"""A model folder and a dataset for a `padfree train` run at a real model shape, without downloads.

    python benchmarks/make_synthetic_run.py --shape 0.8b --out /tmp/run08
    padfree train --model /tmp/run08/model --tokenizer src/padfree/data/tokenizer \
        --data /tmp/run08/data.jsonl --max-tokens 8192 --max-steps 30

The model is the shape's config (padfree.bench.shapes) with random weights and the GDN time-step
init of `padfree.tiny`, saved with `save_pretrained` in bf16; `padfree train` loads it like any
checkpoint. The data is plain-text JSONL: each sample decodes random token ids of padfree's bundled
tokenizer (4,096 tokens, all below the model's vocabulary), with lognormal token lengths (median
`--median-len`, sigma 1, at most `--max-len`), so packed rows see the long-tailed mix real
fine-tuning data has. The loss cannot fall far on random text; this measures speed, not learning.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3_5ForCausalLM

from padfree.bench.shapes import SHAPES, shape_config
from padfree.corpus import bundled_path, lognormal_lengths
from padfree.tiny import _realistic_gates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.8b", choices=SHAPES)
    parser.add_argument("--out", required=True, help="writes <out>/model and <out>/data.jsonl")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--median-len", type=float, default=600.0)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(bundled_path("tokenizer"))
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 0.8B+ is slow on a CPU
    config = shape_config(args.shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config.vocab_size = max(config.vocab_size, len(tokenizer))  # the tiny shape's 256 rows are too few
    with torch.device(device):
        model = Qwen3_5ForCausalLM(config)
    _realistic_gates(model)
    model.to(torch.bfloat16).save_pretrained(out / "model")
    del model

    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(args.seed)
    lengths = lognormal_lengths(args.samples, median=args.median_len, sigma=1.0, max_len=args.max_len, seed=args.seed)
    with open(out / "data.jsonl", "w") as f:
        for n in lengths:
            ids = ordinary[torch.randint(len(ordinary), (max(1, int(n)),), generator=generator)].tolist()
            f.write(json.dumps({"text": tokenizer.decode(ids)}) + "\n")
    print(f"wrote {out / 'model'} ({args.shape}) and {len(lengths)} samples to {out / 'data.jsonl'}")


if __name__ == "__main__":
    main()
