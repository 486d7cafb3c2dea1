"""The `padfree` command: `train`, `demo` (train on the embedded default), `check` and `bench`.

    padfree demo                                     # tiny Qwen3.5 on bundled chat data, CPU, < 2 min
    padfree train --model ckpt/ --data chat.jsonl --max-tokens 8192 --grad-accum 4 --output-dir runs/x
    padfree train --config run.yaml --lr 1e-5        # flags override the file's keys (the flag names)
    padfree train --resume runs/x                    # continue from the newest complete checkpoint
    padfree check [--model ckpt/] [--device cuda]    # versions, backends, packed == per-document proof
    padfree bench --shape 0.8b --json bench.json     # upstream padded / upstream packed / padfree tokens/s
"""

from __future__ import annotations

import argparse
import sys

from padfree.train.config import (
    ATTENTION_BACKENDS, BOOLS, DEVICES, DTYPES, ELEMENTWISE_BACKENDS, GDN_BACKENDS, LOSS_BACKENDS, TRAIN_DTYPES,
    FLOATS, INTS, OVERLONG_POLICIES, SP_COLLECTIVES, SP_MODES, field_names,
)

_HELP = {
    "data": "JSONL/JSON/Parquet file or datasets.save_to_disk folder with 'messages', 'prompt'+'completion' or "
    "'text' records (default: the bundled chat sample)",
    "split": "split of a DatasetDict folder (default: train)",
    "model": "local checkpoint folder (default: an embedded tiny Qwen3.5 with random weights)",
    "tokenizer": "tokenizer folder (default: the model's; the bundled one for the embedded model)",
    "chat_template": "file with a Jinja chat template to use instead of the tokenizer's",
    "output_dir": "where checkpoints and metrics.jsonl go (default: runs/demo or runs/<model folder name>)",
    "cache_dir": "tokenised-data cache (default: <output-dir>/cache)",
    "max_tokens": "tokens per packed row (default: 2048)",
    "overlong": "samples longer than --max-tokens: " + " | ".join(OVERLONG_POLICIES) + " (default: truncate)",
    "pad_multiple": "pad each row to a multiple of this many tokens (default: 64)",
    "grad_accum": "packed rows per optimizer step (default: 1)",
    "epochs": "passes over the data when --max-steps is not given (default: 1)",
    "max_steps": "optimizer steps (sets the schedule length; default: from --epochs; the demo runs 60)",
    "lr": "peak learning rate (default: 2e-5; the embedded tiny model uses 3e-3)",
    "min_lr_ratio": "the cosine schedule ends at lr * this (default: 0.1)",
    "warmup_steps": "linear warmup steps (default: 5%% of the steps)",
    "weight_decay": "AdamW weight decay on matrices (default: 0)",
    "max_grad_norm": "clip the gradient norm to this; 0 disables (default: 1.0)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30%% more compute)",
    "seed": "seed of the initial weights (embedded model), the data order and torch (default: 0)",
    "dtype": " | ".join(TRAIN_DTYPES) + " (default: auto = bf16-mixed on CUDA: fp32 weights and optimizer, bf16 "
    "compute; float32 on CPU)",
    "device": " | ".join(DEVICES) + " (default: auto)",
    "backend": "Gated DeltaNet kernels: auto | torch | fla (default: auto)",
    "attention_backend": "auto | varlen_attn | flash_attn | sdpa_per_doc (default: auto)",
    "compile_elementwise": "torch.compile the RMSNorms and MLPs around the kernels instead of FLA's fused kernels; "
    "the first step compiles. Measured slower than the fused default on an H200 (0.8B shape: -7%% without "
    "--gradient-checkpointing, -30%% with it; docs/benchmarks.md); off by default",
    "elementwise_backend": "the RMSNorms, gated RMSNorms and MLPs: auto (FLA's fused Triton kernels on CUDA "
    "when FLA is installed and --compile-elementwise is off) | torch (upstream's eager code) | fla (default: auto)",
    "loss_backend": "the fused loss's per-chunk softmax: auto (FLA's cross-entropy Triton kernels on CUDA when FLA "
    "is installed and --compile-elementwise is off) | torch (PyTorch's ops) | fla (default: auto)",
    "cuda_graph": "replay each training step from CUDA graphs (padfree.cuda_graph): the host launches one graph "
    "instead of thousands of kernels (0.8B shape, one H100: 2.77x transformers' packed step, vs 1.1-1.6x eager). "
    "One process, or under torchrun one Ulysses group (--sp-degree = the number of processes, no data "
    "parallelism); CUDA with flash-linear-attention, a dense (non-MoE) model; rows are padded to --max-tokens",
    "sp_degree": "under torchrun: processes that split each packed row (sequence parallelism); the rest of the "
    "processes are data-parallel (default: 1)",
    "sp_mode": "sequence parallelism: " + " | ".join(SP_MODES) + " (default: auto = Ulysses where the heads allow)",
    "sp_collectives": "how sequence parallelism communicates: c10d (NCCL/gloo, default) | symmetric_memory (GPUs of "
    "one machine over NVLink, transfers beside the matmuls: 0.914-0.925 of one GPU's per-GPU throughput at sp=2 on "
    "2x H200, against 0.887-0.896 for c10d)",
    "lora_rank": "train LoRA adapters of this rank on all linear layers (needs peft); 0 = full fine-tuning",
    "lora_alpha": "LoRA alpha (default: 2 * rank)",
    "save_every": "checkpoint every N optimizer steps, and always at the end; 0 = only at the end (default: 500)",
    "keep_last": "keep only the newest N checkpoints; 0 = all (default: 0)",
    "log_every": "console line every N steps; metrics.jsonl gets every step (default: 10)",
    "tensorboard": "also log to <output-dir>/tensorboard (needs tensorboard)",
    "resume": "continue from a checkpoint folder, or from an output dir's newest complete checkpoint",
    "overwrite": "replace a previous run's checkpoints and metrics in --output-dir (demo: on by default)",
}
_CHOICES = {"overlong": OVERLONG_POLICIES, "dtype": TRAIN_DTYPES, "device": DEVICES, "backend": GDN_BACKENDS,
            "attention_backend": ATTENTION_BACKENDS, "elementwise_backend": ELEMENTWISE_BACKENDS,
            "loss_backend": LOSS_BACKENDS,
            "sp_mode": SP_MODES, "sp_collectives": SP_COLLECTIVES}  # fmt: skip


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or TOML file whose keys are these flag names; flags override it")
    for name in field_names():
        flag = "--" + name.replace("_", "-")
        if name in BOOLS:
            parser.add_argument(flag, dest=name, action="store_true", help=_HELP[name])
        else:
            kind = int if name in INTS else float if name in FLOATS else str
            parser.add_argument(flag, dest=name, type=kind, choices=_CHOICES.get(name), help=_HELP[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padfree", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="{train,demo,check,bench}")
    # SUPPRESS: only flags given on the command line reach the settings, so they can override --config.
    for name, text in (
        ("train", "fine-tune a Qwen3.5-family model on packed rows"),
        ("demo", "train the embedded default: a tiny Qwen3.5 on bundled chat data, on CPU"),
    ):
        _add_train_flags(commands.add_parser(name, help=text, argument_default=argparse.SUPPRESS))
    check = commands.add_parser("check", help="versions, chosen backends, and a packed == per-document proof")
    check.add_argument("--model", help="local checkpoint folder to check (default: a tiny random Qwen3.5)")
    check.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available")
    check.add_argument("--dtype", choices=DTYPES, default="auto", help="default: bfloat16 on CUDA, float32 on CPU")
    bench = commands.add_parser("bench", help="training-step tokens/s: upstream padded and packed vs padfree")
    _add_bench_flags(bench)
    return parser


def _add_bench_flags(bench: argparse.ArgumentParser) -> None:
    from padfree.bench import DEFAULT_PATHS, PATHS, SHAPES

    bench.add_argument("--shape", choices=SHAPES, default="tiny", help="random-weight model shape (default: tiny)")
    bench.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda if available")
    bench.add_argument("--dtype", choices=DTYPES, default="auto", help="default: bfloat16 on CUDA, float32 on CPU")
    bench.add_argument("--row-tokens", type=int, help="tokens per packed row (default: 8192 on CUDA, 2048 on CPU)")
    bench.add_argument("--steps", type=int, default=5, help="timed rows per path (default: 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed rows per path before timing (default: 2)")
    bench.add_argument("--paths", default=None,
                       help=f"comma list of {', '.join(PATHS)} (default: {','.join(DEFAULT_PATHS)}, and "
                            "padfree_graphed on CUDA with flash-linear-attention)")  # fmt: skip
    bench.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="activation checkpointing for every path (default: on)")  # fmt: skip
    bench.add_argument("--fastest", action="store_true",
                       help="time every path with checkpointing on and off, and compare each path at its faster "
                       "setting that fits the device as well as setting by setting")  # fmt: skip
    bench.add_argument("--rounds", type=int, default=1,
                       help="time the whole sequence of paths this many times and report medians, ranges and "
                       "the median of same-round ratios: on a host-bound GPU machine runs minutes apart differ "
                       "by ~10%% (default: 1)")  # fmt: skip
    bench.add_argument("--median-len", type=float, default=300.0, help="median of the lognormal sample lengths")
    bench.add_argument("--json", help="also write the results to this file")
    bench.add_argument("--seed", type=int, default=0, help="seed of the weights, lengths and token ids (default: 0)")


def _run_train(args: dict, command: str) -> int:
    from padfree.train import TrainError, load, train

    config_file, config = args.pop("config", None), None
    if command == "demo":
        args.setdefault("overwrite", True)  # the demo's output is disposable: rerunning it starts over
    try:
        config, checkpoint, saved = load(args, config_file)
        train(config, checkpoint, saved)
    except TrainError as error:
        print(f"padfree {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" --resume {config.output_dir}" if config is not None else ""
        print(f"\npadfree {command}: interrupted; continue with: padfree train{where}", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    # The CLI owns this process's console: transformers' per-file save/load bars would drown the step lines.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if command in ("train", "demo"):
        return _run_train(args, command)
    if command == "check":
        from padfree.check import run_check

        return run_check(model=args["model"], device=args["device"], dtype=args["dtype"])
    if command == "bench":
        from padfree.bench import BenchSettings, run_bench

        paths = tuple(args["paths"].split(",")) if args["paths"] is not None else None
        return run_bench(BenchSettings(**dict(args, paths=paths)))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
