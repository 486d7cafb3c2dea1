"""Loading (or building) the model and tokenizer `padfree train` trains, and making them trainable.

Order, each step checked before the next: tokenizer -> model weights -> vocabulary fits ->
LoRA adapters (optional, peft) -> padfree.patch -> activation checkpointing -> device.
The embedded default is a tiny Qwen3.5 with random weights drawn from --seed, sized to the bundled
tokenizer's 4,096-token vocabulary, so the whole demo trains on a CPU in well under two minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import padfree
from padfree.checkpointing import enable_checkpointing
from padfree.corpus import bundled_path
from padfree.loss_chunked import check_softmax_backend
from padfree.models.fused import check_elementwise_backend
from padfree.ops._backend import resolve_backend
from padfree.ops.attention import varlen_attention
from padfree.tiny import causal_lm_class, tiny_config
from padfree.train.config import TrainConfig
from padfree.train.errors import TrainError

# hidden 128 (2x the test models): enough capacity that the demo's loss falls visibly in 60 steps.
DEMO_OVERRIDES = dict(hidden_size=128, intermediate_size=256)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda, but PyTorch sees no CUDA GPU; use --device cpu (or auto).")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """One dtype for weights and compute (`padfree check`, `padfree bench`): auto = bf16 on CUDA, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


@dataclass(frozen=True)
class Precision:
    """weights: parameters, gradients and AdamW state; compute: the dtype matmuls run in."""

    name: str
    weights: torch.dtype
    compute: torch.dtype

    @property
    def autocast(self) -> bool:
        return self.weights != self.compute


def resolve_precision(name: str, device: torch.device) -> Precision:
    """--dtype: auto = bf16-mixed on CUDA (its tensor cores), float32 on CPU (bf16 is slow there).

    bf16-mixed keeps fp32 weights and runs the step under bf16 autocast. Pure bfloat16 weights lose
    small updates: an AdamW step of lr 2e-5 on a weight of 0.02 is 1e-3 of it, under bf16's rounding
    step (2^-8 = 4e-3), so most of a fine-tuning run's updates round away.
    """
    if name == "auto":
        name = "bf16-mixed" if device.type == "cuda" else "float32"
    if name == "bf16-mixed":
        return Precision(name, torch.float32, torch.bfloat16)
    return Precision(name, _DTYPES[name], _DTYPES[name])


def _checkpoint_folder(path: str, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise TrainError(
            f"{flag} {path}: no such folder. padfree loads local checkpoints only; download one first, e.g. "
            "`hf download Qwen/Qwen3.5-0.8B --local-dir models/qwen3.5-0.8b`."
        )
    return folder


def load_tokenizer(config: TrainConfig):
    if config.tokenizer is not None:
        path = _checkpoint_folder(config.tokenizer, "--tokenizer")
    elif config.model is not None:
        path = _checkpoint_folder(config.model, "--model")
    else:
        path = bundled_path("tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise TrainError(
            f"cannot load a tokenizer from {path} ({error}); pass --tokenizer with a folder that has tokenizer files."
        ) from None
    if config.chat_template is not None:
        template = Path(config.chat_template)
        if not template.is_file():
            raise TrainError(f"--chat-template {template}: no such file (it should hold a Jinja chat template).")
        tokenizer.chat_template = template.read_text()
    return tokenizer


def build_demo_model(tokenizer, seed: int) -> torch.nn.Module:
    config = tiny_config(
        "qwen3_5", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **DEMO_OVERRIDES,
    )  # fmt: skip
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = causal_lm_class("qwen3_5")(config)
    torch.random.set_rng_state(generator_state)
    return model


def demo_base_dir(config: TrainConfig) -> Path:
    """Where a LoRA run on the embedded model saves its base weights (the adapter needs them to load)."""
    return Path(config.output_dir) / "base-model"


def load_weights(config: TrainConfig, tokenizer, dtype: torch.dtype, path: str | Path | None = None) -> torch.nn.Module:
    """The base model: from `path` (a resumed full-weight checkpoint), --model, or the embedded default."""
    path = path if path is not None else config.model
    if path is None:
        return build_demo_model(tokenizer, config.seed).to(dtype)
    folder = _checkpoint_folder(str(path), "--model")
    if not (folder / "config.json").is_file():
        raise TrainError(
            f"--model {folder} is not a model checkpoint (no config.json); pass the folder that "
            "`save_pretrained` wrote (config.json + *.safetensors)."
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise TrainError(f"cannot load the model in {folder}: {error}") from None
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise TrainError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model's embedding has {embeddings:,} rows; "
            "pass the --tokenizer that belongs to this model."
        )
    return model


def _add_lora(model, config: TrainConfig, adapter: Path | None):
    try:
        import peft
    except ImportError:
        raise TrainError("--lora-rank needs the peft package: pip install peft (or drop --lora-rank).") from None
    if adapter is not None:
        return peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
    lora = peft.LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear", lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return peft.get_peft_model(model, lora)


def check_backends(config: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
    """Fail now, not at the first forward, when an explicitly chosen kernel backend cannot run here."""
    try:
        resolve_backend(config.backend, device)
        probe = torch.zeros(2, 1, 16, dtype=dtype, device=device)
        cu = torch.tensor([0, 2], dtype=torch.int32, device=device)
        varlen_attention(probe, probe, probe, cu, 2, backend=config.attention_backend)
    except ValueError as error:
        raise TrainError(f"--backend {config.backend} / --attention-backend {config.attention_backend}: {error}") from None
    try:
        check_elementwise_backend(config.elementwise_backend, config.compile_elementwise)
    except ValueError as error:
        raise TrainError(f"--elementwise-backend {config.elementwise_backend}: {error}") from None
    if config.elementwise_backend == "fla" and device.type != "cuda":
        raise TrainError(
            f"--elementwise-backend fla runs FLA's Triton kernels, which need CUDA; the device is {device}. "
            "Use --elementwise-backend auto (upstream's norms off the GPU)."
        )
    try:
        check_softmax_backend(config.loss_backend, config.compile_elementwise, "--loss-backend")
    except ValueError as error:
        raise TrainError(str(error)) from None
    if config.loss_backend == "fla" and device.type != "cuda":
        raise TrainError(
            f"--loss-backend fla runs FLA's Triton kernels, which need CUDA; the device is {device}. "
            "Use --loss-backend auto (PyTorch's softmax off the GPU)."
        )


def prepare_model(
    config: TrainConfig, tokenizer, device: torch.device, resume_from: Path | None = None, sequence_parallel=None
):
    """The patched, trainable model on `device`. `resume_from` is a checkpoint folder whose weights
    (full fine-tuning) or adapter (LoRA) replace the initial ones. `sequence_parallel`: a
    padfree.parallel.SequenceParallel (--sp-degree > 1), checked here against the model's heads."""
    precision = resolve_precision(config.dtype, device)
    check_backends(config, device, precision.compute)
    full_weights = resume_from if (resume_from is not None and not config.lora_rank) else None
    model = load_weights(config, tokenizer, precision.weights, full_weights)
    if config.lora_rank:
        # The adapter's config records where its base model is: an absolute path, so it loads from anywhere.
        base = Path(config.model) if config.model is not None else demo_base_dir(config)
        model.name_or_path = str(base.resolve())
        model = _add_lora(model, config, resume_from)
    settings = dict(backend=config.backend, attention_backend=config.attention_backend,
                    compile_elementwise=config.compile_elementwise, elementwise_backend=config.elementwise_backend,
                    loss_backend=config.loss_backend)  # fmt: skip
    if sequence_parallel is not None:
        settings["sequence_parallel"] = sequence_parallel
    try:
        padfree.patch(model, **settings)
    except TypeError as error:
        raise TrainError(f"unsupported model: {error}") from None
    except ValueError as error:  # only the sequence-parallel checks raise it
        if sequence_parallel is None:
            raise
        raise TrainError(f"--sp-degree {config.sp_degree} --sp-mode {config.sp_mode}: {error}") from None
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = False
    return model.to(device).train()


def parameter_counts(model) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
