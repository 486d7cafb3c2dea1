"""`padfree train` end to end on CPU: metrics, checkpoints that load with plain transformers, exact
resume after a kill, atomic checkpoint writes, loss normalisation, activation checkpointing, config
files, LoRA, and the embedded default's loss falling."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_utils
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import padfree.train
from padfree.cli import main
from padfree.corpus import bundled_path
from padfree.train import checkpoint as ckpt
from padfree.train.data import load_training_data
from padfree.train.metrics import MetricsLogger, read_metrics
from padfree.train.model import build_demo_model, load_tokenizer

FIELDS = {"step", "loss", "lr", "grad_norm", "tokens", "trained_tokens", "tokens_per_s", "packing_efficiency",
          "peak_mem_mb", "mfu"}  # fmt: skip
# Small rows and steps keep every run here to a second or two on 2 CPU cores.
SMALL = ["--max-tokens", "256", "--max-steps", "6", "--grad-accum", "2", "--save-every", "2"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))  # tokenise the bundled data once for the module


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
    """The uninterrupted SMALL run every resume test must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["train", *SMALL, "--cache-dir", cache_dir, "--output-dir", str(out)]) == 0
    return out, read_metrics(out / "metrics.jsonl")


def losses(records):
    return [r["loss"] for r in records]


def generate_from(folder) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Explain `ast.parse`."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = torch.tensor([list(prompt["input_ids"])])
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 4)
    return out


def test_metrics_checkpoints_and_loading(reference_run):
    out, records = reference_run
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert set(record) == FIELDS
        assert record["tokens"] > record["trained_tokens"] > 0
        assert 0 < record["packing_efficiency"] <= 1 and record["peak_mem_mb"] > 0 and record["mfu"] is None
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4, 6]
    final = out / "checkpoint-6"
    assert (final / "model.safetensors").is_file() and (final / ckpt.COMPLETE).is_file()
    generate_from(final)  # plain transformers, no padfree patch


def test_kill_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch, cache_dir, reference_run):
    ref_out, ref_records = reference_run
    real_log = MetricsLogger.log

    def log_then_die(self, record):  # killed after step 5 was logged, before any step-5 checkpoint
        real_log(self, record)
        if record["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLogger, "log", log_then_die)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--cache-dir", cache_dir, "--output-dir", str(out)]) == 130
    monkeypatch.undo()
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4]
    assert main(["train", "--resume", str(out), "--cache-dir", cache_dir]) == 0  # settings come from the checkpoint
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # step 5 was recomputed, not duplicated
    assert losses(records) == pytest.approx(losses(ref_records), rel=0, abs=1e-6)
    assert [r["grad_norm"] for r in records] == pytest.approx([r["grad_norm"] for r in ref_records], abs=1e-6)
    ref_weights = load_file(ref_out / "checkpoint-6/model.safetensors")
    weights = load_file(out / "checkpoint-6/model.safetensors")
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)


def test_interrupted_checkpoint_write_is_never_resumed(tmp_path, monkeypatch, cache_dir, reference_run):
    _, ref_records = reference_run
    real_marker = ckpt._write_marker

    def fail_at_step_4(folder, step):
        if step == 4:
            raise OSError("simulated: disk full while writing checkpoint-4")
        real_marker(folder, step)

    monkeypatch.setattr(ckpt, "_write_marker", fail_at_step_4)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="simulated"):
        main(["train", *SMALL, "--cache-dir", cache_dir, "--output-dir", str(out)])
    monkeypatch.undo()
    assert not (out / "checkpoint-4").exists()
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2]
    # A hard kill mid-write skips the cleanup: leave what it would, plus an incomplete checkpoint folder.
    shutil.copytree(out / "checkpoint-2", out / ".tmp-checkpoint-4-99999")
    (out / ".tmp-checkpoint-4-99999" / ckpt.COMPLETE).unlink()
    shutil.copytree(out / ".tmp-checkpoint-4-99999", out / "checkpoint-5")
    assert ckpt.find_checkpoint(out) == out / "checkpoint-2"
    with pytest.raises(padfree.train.TrainError, match="incomplete"):
        ckpt.find_checkpoint(out / "checkpoint-5")
    assert main(["train", "--resume", str(out), "--cache-dir", cache_dir]) == 0
    assert losses(read_metrics(out / "metrics.jsonl")) == pytest.approx(losses(ref_records), rel=0, abs=1e-6)
    assert not list(out.glob(".tmp-checkpoint-*"))
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [2, 4, 6]


def test_step_loss_is_normalised_by_the_whole_steps_trained_tokens(tmp_path, cache_dir):
    """Step 1 with 3 micro-batches == summed CE of every document run alone (unpatched) / all trained tokens."""
    out = tmp_path / "run"
    args = ["--max-tokens", "256", "--grad-accum", "3", "--max-steps", "1", "--cache-dir", cache_dir]
    assert main(["train", *args, "--output-dir", str(out)]) == 0
    reported = read_metrics(out / "metrics.jsonl")[0]["loss"]

    config, _, _ = padfree.train.load({"max_tokens": 256, "cache_dir": cache_dir, "output_dir": str(tmp_path / "x")})
    tokenizer = load_tokenizer(config)
    data = load_training_data(bundled_path("chat_sample.jsonl"), "train", tokenizer, cache_dir, 256, "truncate", 0)
    stream = data.stream
    model = build_demo_model(tokenizer, seed=0)
    row_sums, row_counts = [], []
    with torch.no_grad():
        for position in range(3):
            ce, count = 0.0, 0
            for sample in stream.row(position):
                logits = model(input_ids=torch.tensor([sample["input_ids"]])).logits[0, :-1]
                targets = torch.tensor(sample["labels"][1:])
                ce += F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
                count += int((targets != -100).sum())
            row_sums.append(ce)
            row_counts.append(count)
    expected = sum(row_sums) / sum(row_counts)
    assert reported == pytest.approx(expected, rel=1e-5)
    mean_of_means = sum(s / n for s, n in zip(row_sums, row_counts)) / 3
    assert abs(mean_of_means - expected) > 1e-4  # the rows' counts differ, so the wrong rule would be caught


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, monkeypatch, cache_dir):
    args = ["--max-tokens", "256", "--max-steps", "2", "--cache-dir", cache_dir]
    assert main(["train", *args, "--output-dir", str(tmp_path / "plain")]) == 0
    calls = []
    real_checkpoint = transformers.modeling_utils.checkpoint

    def counting_checkpoint(function, *a, **k):
        calls.append(1)
        return real_checkpoint(function, *a, **k)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    assert main(["train", *args, "--gradient-checkpointing", "--output-dir", str(tmp_path / "ckpt")]) == 0
    assert len(calls) == 2 * 4  # every decoder layer of both steps ran under activation checkpointing
    plain, recomputed = read_metrics(tmp_path / "plain/metrics.jsonl"), read_metrics(tmp_path / "ckpt/metrics.jsonl")
    assert losses(recomputed) == pytest.approx(losses(plain), abs=1e-6)
    assert [r["grad_norm"] for r in recomputed] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-5)


def test_config_file_with_flag_override(tmp_path, cache_dir):
    (tmp_path / "run.yaml").write_text("max-tokens: 256\nmax_steps: 2\nlr: 1e-3\nsave-every: 0\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--max-steps", "3", "--cache-dir", cache_dir,
                 "--output-dir", str(out)]) == 0  # fmt: skip
    saved = ckpt.read_saved_config(out / "checkpoint-3")
    assert (saved["max_steps"], saved["max_tokens"], saved["lr"]) == (3, 256, 1e-3)
    assert len(read_metrics(out / "metrics.jsonl")) == 3
    (tmp_path / "run.toml").write_text('max-tokens = 128\noverlong = "drop"\n')
    assert padfree.train.config.read_config_file(tmp_path / "run.toml") == {"max_tokens": 128, "overlong": "drop"}


def test_lora_adapter_trains_and_loads(tmp_path, cache_dir):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    args = ["--lora-rank", "4", "--max-tokens", "256", "--max-steps", "2", "--cache-dir", cache_dir]
    assert main(["train", *args, "--output-dir", str(out)]) == 0
    assert (out / "checkpoint-2/adapter_config.json").is_file() and (out / "base-model/config.json").is_file()
    generate_from(out / "checkpoint-2")  # transformers loads base + adapter through peft


def test_embedded_default_loss_falls(tmp_path, capsys):
    """The demo itself (60 steps of 2,048-token rows): the loss must visibly fall."""
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    records = read_metrics(out / "metrics.jsonl")
    first, last = losses(records)[:10], losses(records)[-10:]
    assert len(records) == 60
    assert sum(first) / 10 - sum(last) / 10 > 1.5, (first, last)
    assert "loss: first" in printed and f"model: {out / 'checkpoint-60'}" in printed


def test_epochs_visit_every_row_once_per_epoch_and_keep_last(tmp_path, capsys):
    rows = bundled_path("chat_sample.jsonl").read_text().splitlines()[:8]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    args = ["--data", str(tmp_path / "d.jsonl"), "--max-tokens", "128", "--epochs", "2", "--grad-accum", "3"]
    assert main(["train", *args, "--save-every", "1", "--keep-last", "1", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    records = read_metrics(out / "metrics.jsonl")
    num_rows = int(printed.split("packed into ")[1].split(" rows")[0])
    assert len(records) == -(-2 * num_rows // 3)  # the last step takes what is left of epoch 2
    real_tokens = int(printed.split("efficiency (")[1].split(" real")[0].replace(",", ""))
    assert sum(r["tokens"] for r in records) == 2 * real_tokens
    assert [step for step, _ in ckpt.complete_checkpoints(out)] == [len(records)]
