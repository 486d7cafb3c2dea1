"""`padfree train` data handling: record shapes, trained-token masks, the cache, and every bad input
failing before training with a message that names the problem and the fix, leaving no output dir."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from padfree.cli import main
from padfree.corpus import bundled_path
from padfree.train.config import BOOLS, load, normalise
from padfree.train.data import load_training_data, save_cache
from padfree.train.records import Records, detect_shape, read_records
from padfree.train.tokenize import tokenize_records

CHAT = [json.loads(line) for line in bundled_path("chat_sample.jsonl").read_text().splitlines()[:40]]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_path("tokenizer"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_error(capsys, args):
    """Run `padfree train` expecting a clean error: exit code 2 and one stderr line; returns the message."""
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "padfree train: error: " in err and "Traceback" not in err
    return err.split("padfree train: error: ", 1)[1]


def test_chat_masks_assistant_turns_only(tokenizer):
    records = Records([CHAT[0]], "mem", "x", None)
    data = tokenize_records(tokenizer, records, "chat")
    ids, trained = data.ids.tolist(), data.trained.tolist()
    assert tokenizer.decode([i for i, t in zip(ids, trained) if t]) == CHAT[0]["messages"][1]["content"] + "<|im_end|>"


def test_chat_without_generation_markers_finds_the_same_turns(tokenizer):
    """Real templates (Qwen's) lack {% generation %}: the prefix-render fallback must give the same mask."""
    conversation = {"messages": CHAT[0]["messages"] + CHAT[1]["messages"]}  # two assistant turns
    records = Records([conversation], "mem", "x", None)
    marked = tokenize_records(tokenizer, records, "chat")
    plain = AutoTokenizer.from_pretrained(bundled_path("tokenizer"))
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    fallback = tokenize_records(plain, records, "chat")
    assert marked.trained.sum() > 0 and (marked.ids == fallback.ids).all()
    assert (marked.trained == fallback.trained).all()


def test_prompt_completion_and_text_shapes(tokenizer):
    records = Records([{"prompt": "Say hi.", "completion": " hi"}], "mem", "x", None)
    data = tokenize_records(tokenizer, records, "prompt_completion")
    trained_ids = data.ids[data.trained].tolist()
    assert trained_ids == tokenizer(" hi", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    text = tokenize_records(tokenizer, Records([{"text": "plain words"}], "mem", "x", None), "text")
    assert text.trained.all() and text.ids[-1] == tokenizer.eos_token_id


def test_json_parquet_and_dataset_folder_read_alike(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"text": f"sample {i}"} for i in range(5)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "folder"))
    for source in ("d.json", "d.parquet", "folder"):
        assert read_records(tmp_path / source).rows == rows
    with pytest.raises(ValueError, match="has splits \\['train'\\], not 'test'; pass --split"):
        read_records(tmp_path / "folder", split="test")


def test_cache_is_reused_and_invalidated_by_content(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", CHAT)
    first = load_training_data(path, "train", tokenizer, tmp_path / "cache", 512, "truncate", 0)
    save_cache(first, tmp_path / "cache")
    again = load_training_data(path, "train", tokenizer, tmp_path / "cache", 512, "truncate", 0)
    assert not first.from_cache and again.from_cache
    assert (again.stream.tokens.ids == first.stream.tokens.ids).all()
    write_jsonl(path, CHAT[:-1])
    assert not load_training_data(path, "train", tokenizer, tmp_path / "cache", 512, "truncate", 0).from_cache


def test_malformed_jsonl_line(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(CHAT[0]) + "\n\n" + '{"messages": [}\n')
    err = run_error(capsys, ["--data", str(path), "--output-dir", str(tmp_path / "out")])
    assert "line 3 is not valid JSON" in err and "fix or delete that line" in err
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("\n")
    err = run_error(capsys, ["--data", str(tmp_path / "d.jsonl"), "--output-dir", str(tmp_path / "out")])
    assert "holds no records" in err and not (tmp_path / "out").exists()


def test_unknown_record_shape(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    err = run_error(capsys, ["--data", str(path), "--output-dir", str(tmp_path / "out")])
    assert "line 1 has keys ['answer', 'question']" in err
    assert "'messages' (chat), 'prompt' + 'completion', or 'text'" in err
    assert not (tmp_path / "out").exists()


def test_samples_without_trained_tokens_are_skipped_then_fatal(tmp_path, capsys):
    user_only = {"messages": [{"role": "user", "content": "hello?"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [user_only] * 3 + CHAT[:5])
    out = tmp_path / "out"
    args = ["--data", str(path), "--output-dir", str(out), "--max-steps", "1", "--max-tokens", "256"]
    assert main(["train", *args]) == 0
    assert "3 skipped: no trained token" in capsys.readouterr().out
    path = write_jsonl(tmp_path / "none.jsonl", [user_only] * 3)
    err = run_error(capsys, ["--data", str(path), "--output-dir", str(tmp_path / "out2")])
    assert "no usable sample" in err and "3 skipped: no trained token" in err
    assert not (tmp_path / "out2").exists()


def test_overlong_policies(tmp_path, capsys, tokenizer):
    long_text = {"text": " ".join(["word"] * 300)}
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "short one"}, long_text])
    args = ["--data", str(path), "--max-tokens", "64", "--max-steps", "1"]
    err = run_error(capsys, [*args, "--overlong", "error", "--output-dir", str(tmp_path / "e")])
    assert "1 samples are longer than --max-tokens 64" in err and "d.jsonl line 2" in err
    assert "--overlong truncate or --overlong drop" in err and not (tmp_path / "e").exists()
    expected_lines = {"drop": "1 dropped: longer than --max-tokens", "truncate": "1 truncated to --max-tokens"}
    for policy, expected in expected_lines.items():
        assert main(["train", *args, "--overlong", policy, "--output-dir", str(tmp_path / policy)]) == 0
        assert expected in capsys.readouterr().out


def test_model_folder_without_config(tmp_path, capsys):
    (tmp_path / "not_a_model").mkdir()
    args = ["--model", str(tmp_path / "not_a_model"), "--tokenizer", str(bundled_path("tokenizer"))]
    err = run_error(capsys, [*args, "--output-dir", str(tmp_path / "out")])
    assert "is not a model checkpoint (no config.json)" in err and not (tmp_path / "out").exists()


def test_unsupported_model(tmp_path, capsys):
    config = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    args = ["--model", str(tmp_path / "llama"), "--tokenizer", str(bundled_path("tokenizer"))]
    err = run_error(capsys, [*args, "--output-dir", str(tmp_path / "out")])
    assert "unsupported model" in err and "got LlamaForCausalLM" in err and not (tmp_path / "out").exists()


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    err = run_error(capsys, ["--output-dir", str(out)])
    assert f"--resume {out}" in err and "--overwrite" in err


def test_bad_config_file_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("max_tokens: 256\nlearning_rate: 0.1\n")
    err = run_error(capsys, ["--config", str(tmp_path / "c.yaml")])
    assert "unknown setting 'learning_rate'" in err and "max-tokens" in err


def test_shape_must_be_uniform():
    records = Records([{"text": "a"}, {"prompt": "p", "completion": "c"}], "d.jsonl", "x", [1, 2])
    with pytest.raises(ValueError, match="d.jsonl line 2 lacks \\['text'\\]"):
        detect_shape(records)



def test_backend_that_cannot_run_here(tmp_path, capsys):
    err = run_error(capsys, ["--backend", "fla", "--device", "cpu", "--output-dir", str(tmp_path / "out")])
    assert "backend='fla' needs CUDA tensors" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config_text, flags, message",
    [
        ("", ["--elementwise-backend", "fla"], "--elementwise-backend fla runs FLA's Triton kernels, which need CUDA"),
        # argparse refuses a bad flag value itself; a config file goes through padfree's own check
        ("elementwise_backend: triton\n", [], "--elementwise-backend must be one of auto, torch, fla"),
        ("", ["--loss-backend", "fla"], "--loss-backend fla runs FLA's Triton kernels, which need CUDA"),
        ("", ["--loss-backend", "fla", "--compile-elementwise"], "--loss-backend='fla' runs FLA's kernels"),
        ("loss_backend: triton\n", [], "--loss-backend must be one of auto, torch, fla"),
    ],
)
def test_elementwise_backend_that_cannot_run_here(tmp_path, capsys, monkeypatch, config_text, flags, message):
    import padfree.loss_chunked as loss_chunked
    import padfree.models.fused as fused

    # the CUDA checks, not the install checks, must fire
    monkeypatch.setattr(fused, "fla_available", lambda: True)
    monkeypatch.setattr(loss_chunked, "fla_available", lambda: True)
    (tmp_path / "c.yaml").write_text(config_text + "max_tokens: 256\n")
    args = ["--config", str(tmp_path / "c.yaml"), *flags, "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    err = run_error(capsys, args)
    assert message in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cuda-graph", "--device", "cpu"], "--cuda-graph: CUDA graphs need a CUDA device"),
        (["--cuda-graph", "--compile-elementwise"], "--cuda-graph does not cover --compile-elementwise"),
        (["--cuda-graph", "--sp-degree", "2", "--sp-mode", "context"], "--cuda-graph runs sequence parallelism as "
         "Ulysses only"),
        (["--cuda-graph", "--sp-degree", "2"], "launch it with torchrun"),  # one process: the sharded step needs 2
    ],
)
def test_cuda_graph_that_cannot_run_here(tmp_path, capsys, flags, message):
    err = run_error(capsys, [*flags, "--max-tokens", "256", "--output-dir", str(tmp_path / "out")])
    assert message in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sp-degree", "2", "--sp-collectives", "symmetric_memory", "--device", "cpu"], "needs --sp-degree > 1 and --device cuda"),
        (["--sp-collectives", "symmetric_memory"], "needs --sp-degree > 1 and --device cuda"),
    ],
)
def test_sp_collectives_that_cannot_run_here(tmp_path, capsys, flags, message):
    """Symmetric memory needs CUDA GPUs splitting rows: refused, with the fix, before any process group or file."""
    err = run_error(capsys, [*flags, "--max-tokens", "256", "--output-dir", str(tmp_path / "out")])
    assert message in err and not (tmp_path / "out").exists()


def test_resume_cannot_switch_cuda_graph(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--max-tokens", "256", "--max-steps", "2", "--save-every", "1", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    err = run_error(capsys, ["--resume", str(out), "--cuda-graph", "--max-steps", "3"])
    assert "was trained without --cuda-graph; resume it the same way" in err


def test_bool_settings_are_bools():
    # --cuda-graph once came through as the string "True" (it missed a hand-kept list of bool settings): the saved
    # run config then held "True", and resuming that run failed its same-mode check (`True != "True"`).
    config, _, _ = load({"cuda_graph": True, "max_tokens": 256})
    assert config.cuda_graph is True
    assert BOOLS >= {"cuda_graph", "gradient_checkpointing"}
    assert normalise({name.replace("_", "-"): "false" for name in BOOLS}, "test") == dict.fromkeys(BOOLS, False)


@pytest.mark.parametrize("saved_value, flags, message", [
    ("True", [], "--cuda-graph: CUDA graphs need a CUDA device"),  # inherited as True: refused for the device
    ("False", ["--cuda-graph"], "was trained without --cuda-graph"),  # a mode switch, refused as such
])
def test_resume_reads_a_cuda_graph_saved_as_a_string(tmp_path, capsys, saved_value, flags, message):
    # Runs saved before cuda_graph was coerced hold it as the string "True" or "False"; both resume as the bool.
    out = tmp_path / "run"
    assert main(["train", "--max-tokens", "256", "--max-steps", "2", "--save-every", "1", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    saved_path = out / "checkpoint-2" / "train_config.json"
    saved_path.write_text(json.dumps({**json.loads(saved_path.read_text()), "cuda_graph": saved_value}))
    err = run_error(capsys, ["--resume", str(out), "--max-steps", "3", *flags])
    assert message in err, err
