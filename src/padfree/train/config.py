"""`padfree train` settings: one dataclass whose field names are the CLI flags (`max_tokens` is
`--max-tokens`), and how flags, a config file, a resumed run and the embedded default combine.

Precedence, lowest first:
    field defaults  <  the embedded-default preset (only when no --model is given)
                    <  the resumed run's saved settings  <  --config file  <  flags on the command line
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from padfree.ops._backend import BACKENDS as GDN_BACKENDS
from padfree.ops.attention import BACKENDS as ATTENTION_BACKENDS
from padfree.loss_chunked import SOFTMAX_BACKENDS as LOSS_BACKENDS
from padfree.models.fused import ELEMENTWISE_BACKENDS
from padfree.parallel import MODES as SP_MODES
from padfree.train.checkpoint import find_checkpoint, read_saved_config
from padfree.train.errors import TrainError

SP_COLLECTIVES = ("c10d", "symmetric_memory")  # padfree.parallel.comm; "functional" is kept for comparisons only

OVERLONG_POLICIES = ("truncate", "drop", "error")
DTYPES = ("auto", "float32", "bfloat16")  # what `padfree check` / `bench` run in
TRAIN_DTYPES = (*DTYPES, "bf16-mixed")  # training adds fp32 weights under bf16 autocast (train.model.Precision)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    data: str | None = None  # JSONL/JSON/Parquet file or `datasets.save_to_disk` folder; None: bundled chat sample
    split: str = "train"  # which split of a DatasetDict folder
    model: str | None = None  # local checkpoint folder; None: the embedded tiny Qwen3.5 (random weights)
    tokenizer: str | None = None  # default: the model folder (the bundled tokenizer for the embedded model)
    chat_template: str | None = None  # a Jinja file replacing the tokenizer's chat template
    output_dir: str | None = None  # default: runs/demo, or runs/<model folder name>
    cache_dir: str | None = None  # tokenised-data cache; default: <output_dir>/cache
    max_tokens: int = 2048  # tokens per packed row (the packing budget)
    overlong: str = "truncate"  # samples longer than max_tokens: truncate | drop | error
    pad_multiple: int = 64  # each row is padded to a multiple of this (steadier shapes and memory)
    grad_accum: int = 1  # packed rows (micro-batches) per optimizer step
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs and sets the schedule length
    lr: float = 2e-5
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio
    warmup_steps: int | None = None  # default: 5% of the steps (at least 1)
    weight_decay: float = 0.0  # applied to matrices only (not norms or biases)
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still reported)
    gradient_checkpointing: bool = False
    seed: int = 0
    dtype: str = "auto"  # auto: bf16-mixed on CUDA (fp32 weights, bf16 compute), float32 on CPU
    device: str = "auto"
    backend: str = "auto"  # Gated DeltaNet kernels (padfree.patch backend=)
    attention_backend: str = "auto"
    compile_elementwise: bool = False  # torch.compile the norms and MLPs (padfree.patch compile_elementwise=)
    elementwise_backend: str = "auto"  # the norms and MLPs: auto (FLA's fused kernels on CUDA) | torch | fla
    loss_backend: str = "auto"  # the loss's per-chunk softmax: auto (FLA's kernels on CUDA) | torch | fla
    # Replay each step from CUDA graphs (padfree.cuda_graph): CUDA with FLA, a dense model, one process or one
    # Ulysses sequence-parallel group (torchrun, --sp-degree = the number of processes: no data parallelism); rows
    # are padded to max_tokens (the graph's fixed shape) instead of to a multiple of pad_multiple.
    cuda_graph: bool = False
    # Under torchrun: ranks per sequence-parallel group, which split each packed row's tokens; the
    # world size must be a multiple, and the rest is data parallelism (padfree.train.distributed).
    sp_degree: int = 1
    sp_mode: str = "auto"  # auto | ulysses | context (padfree.parallel)
    # How the sequence-parallel layers communicate: c10d (NCCL or gloo) | symmetric_memory (CUDA GPUs of one machine
    # that reach each other's memory, NVLink: the gather_scatter exchange's transfers pipelined with its matmuls).
    sp_collectives: str = "c10d"
    lora_rank: int = 0  # > 0 trains LoRA adapters (needs peft) instead of all weights
    lora_alpha: float | None = None  # default: 2 * lora_rank
    save_every: int = 500  # optimizer steps between checkpoints (0: only at the end)
    keep_last: int = 0  # keep only the newest N checkpoints (0: keep all)
    log_every: int = 10  # console line every N steps (metrics.jsonl gets every step)
    tensorboard: bool = False  # also log to <output_dir>/tensorboard (needs tensorboard)
    resume: str | None = None  # a checkpoint folder, or an output dir (its newest complete checkpoint)
    overwrite: bool = False  # replace a previous run's checkpoints and metrics in output_dir

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The embedded default trains a randomly initialised tiny model: it needs a far higher learning rate
# than fine-tuning a real checkpoint, and a fixed step count so the CPU demo stays under 2 minutes.
DEMO_PRESET = dict(lr=3e-3, max_steps=60, warmup_steps=5, log_every=5, save_every=0)

_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _fields_of_type(kind: str) -> frozenset[str]:
    # From the annotations (strings under `from __future__ import annotations`), so that a new field is coerced by
    # its type without a hand-kept list: cuda_graph once missed the bool list, and `--cuda-graph` was stored as the
    # string "True" (a resume then failed its same-mode check).
    return frozenset(name for name, f in _FIELDS.items() if str(f.type).removesuffix(" | None") == kind)


BOOLS, INTS, FLOATS = _fields_of_type("bool"), _fields_of_type("int"), _fields_of_type("float")
# Settings that change the loss curve; a resume that changes one no longer matches the original run.
CURVE_KEYS = ("data", "split", "max_tokens", "overlong", "pad_multiple", "grad_accum", "epochs", "max_steps", "lr",
              "min_lr_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "seed", "dtype", "lora_rank",
              "lora_alpha")  # fmt: skip


def field_names() -> list[str]:
    return list(_FIELDS)


def _coerce(key: str, value: Any, origin: str) -> Any:
    """value as the field's type; YAML reads `3e-3` as a string, so numbers given as strings are accepted."""
    if value is None:
        return None
    try:
        if key in BOOLS:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
                return str(value).lower() in ("true", "1", "yes")
            raise ValueError(value)
        if key in INTS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if key in FLOATS:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = "true/false" if key in BOOLS else "an integer" if key in INTS else "a number"
        raise TrainError(f"{origin}: {key} must be {kind}, got {value!r}.") from None


def saved_setting(saved: dict[str, Any], key: str) -> Any:
    """A resumed run's saved setting (its default if absent), coerced as a flag is: runs saved before cuda_graph was
    coerced hold it as the string "True" or "False"."""
    return _coerce(key, saved.get(key, _FIELDS[key].default), "the resumed run's settings")


def normalise(settings: dict[str, Any], origin: str) -> dict[str, Any]:
    """Keys as field names (`max-tokens` -> `max_tokens`), values coerced; unknown keys raise TrainError."""
    out = {}
    for raw_key, value in settings.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            accepted = ", ".join(k.replace("_", "-") for k in _FIELDS)
            raise TrainError(f"{origin}: unknown setting {raw_key!r}. Accepted settings (the flag names): {accepted}.")
        out[key] = _coerce(key, value, origin)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or TOML (.toml) file whose keys are the flag names."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--config {path}: no such file.")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            settings = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise TrainError(f"--config {path} does not parse: {error}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # here, not at the top: only YAML configs need it

        try:
            settings = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise TrainError(f"--config {path} does not parse: {error}") from None
    else:
        raise TrainError(f"--config {path}: use a .yaml, .yml or .toml file.")
    if not isinstance(settings, dict):
        raise TrainError(f"--config {path} must hold a mapping of flag names to values, got {type(settings).__name__}.")
    return normalise(settings, f"--config {path}")


# Per-invocation settings, never inherited from the run being resumed: the run's folder is where
# its checkpoint is now (it may have moved), and a resume must not --overwrite what it resumes.
NOT_INHERITED = ("resume", "overwrite", "output_dir", "cache_dir")


def load(flags: dict[str, Any], config_file: str | None = None) -> tuple[TrainConfig, Path | None, dict | None]:
    """The run's settings from flags (only those given) and --config, plus the checkpoint to resume
    and its saved settings (None, None for a fresh run)."""
    file_settings = read_config_file(config_file) if config_file else {}
    flags = normalise(flags, "flags")
    resume = flags.get("resume", file_settings.get("resume"))
    if resume is None:
        return resolve(flags, file_settings, None), None, None
    checkpoint = find_checkpoint(resume)
    saved = read_saved_config(checkpoint)
    return resolve(flags, file_settings, saved, default_output_dir=checkpoint.parent), checkpoint, saved


def resolve(
    flags: dict[str, Any], file_settings: dict[str, Any], saved: dict[str, Any] | None, default_output_dir=None
) -> TrainConfig:
    """Combine the sources (see the module docstring) and validate the result."""
    # Coerced like flags: runs saved before cuda_graph was coerced hold it as the string "True" (or "False").
    inherited = {k: _coerce(k, v, "the resumed run's settings") for k, v in (saved or {}).items()
                 if k in _FIELDS and k not in NOT_INHERITED}  # fmt: skip
    chosen = {**inherited, **file_settings, **flags}
    preset = dict(DEMO_PRESET) if chosen.get("model") is None else {}
    if "epochs" in chosen:
        preset.pop("max_steps", None)  # an explicit --epochs sets the length, not the preset's step count
    config = TrainConfig(**{**preset, **chosen})
    validate(config)
    for key in ("data", "model", "tokenizer", "chat_template"):  # saved absolute: a resume may run elsewhere
        if getattr(config, key) is not None:
            setattr(config, key, str(Path(getattr(config, key)).expanduser().absolute()))
    if config.output_dir is None and default_output_dir is not None:
        config.output_dir = str(default_output_dir)
    if config.output_dir is None:
        config.output_dir = str(Path("runs") / ("demo" if config.model is None else Path(config.model).name))
    if config.cache_dir is None:
        config.cache_dir = str(Path(config.output_dir) / "cache")
    if config.lora_rank and config.lora_alpha is None:
        config.lora_alpha = 2.0 * config.lora_rank
    return config


def validate(config: TrainConfig) -> None:
    positive = ("max_tokens", "pad_multiple", "grad_accum", "epochs", "log_every", "sp_degree")
    for key in positive:
        if getattr(config, key) < 1:
            raise TrainError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(config, key)}.")
    if config.max_steps is not None and config.max_steps < 1:
        raise TrainError(f"--max-steps must be >= 1, got {config.max_steps}.")
    for key in ("warmup_steps", "save_every", "keep_last", "lora_rank", "max_grad_norm", "weight_decay"):
        value = getattr(config, key)
        if value is not None and value < 0:
            raise TrainError(f"--{key.replace('_', '-')} must be >= 0, got {value}.")
    if config.cuda_graph and config.compile_elementwise:
        raise TrainError("--cuda-graph does not cover --compile-elementwise; drop one of them.")
    if config.cuda_graph and config.sp_degree > 1 and config.sp_mode == "context":
        raise TrainError(
            "--cuda-graph runs sequence parallelism as Ulysses only: context parallelism cuts each row's documents on "
            "the host, which a CUDA graph cannot replay; pass --sp-mode ulysses (or auto), or drop --cuda-graph."
        )
    if config.sp_collectives == "symmetric_memory" and (config.device == "cpu" or config.sp_degree == 1):
        raise TrainError(
            "--sp-collectives symmetric_memory runs sequence parallelism over CUDA GPUs' shared memory: it needs "
            "--sp-degree > 1 and --device cuda (or auto on a GPU machine); drop it, or pass --sp-collectives c10d."
        )
    if not config.lr > 0:
        raise TrainError(f"--lr must be > 0, got {config.lr}.")
    if not 0 <= config.min_lr_ratio <= 1:
        raise TrainError(f"--min-lr-ratio must be in [0, 1], got {config.min_lr_ratio}.")
    choices_of = (("overlong", OVERLONG_POLICIES), ("dtype", TRAIN_DTYPES), ("device", DEVICES), ("backend", GDN_BACKENDS),
                  ("attention_backend", ATTENTION_BACKENDS), ("elementwise_backend", ELEMENTWISE_BACKENDS),
                  ("loss_backend", LOSS_BACKENDS), ("sp_mode", SP_MODES),
                  ("sp_collectives", SP_COLLECTIVES))  # fmt: skip
    for key, choices in choices_of:
        if getattr(config, key) not in choices:
            flag = "--" + key.replace("_", "-")
            raise TrainError(f"{flag} must be one of {', '.join(choices)}; got {getattr(config, key)!r}.")


def changed_curve_settings(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """`key: old -> new` for each loss-curve setting a resume changes (printed as a note)."""
    now = config.to_dict()
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in CURVE_KEYS if k in saved and saved[k] != now[k]]


def dumps(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)
