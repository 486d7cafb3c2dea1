"""Regenerate src/padfree/data/: tokenizer, chat sample and length corpus, from this Python's stdlib.

Nothing here is downloaded and nothing is written by us: all text comes from the CPython standard
library sources of the running interpreter (`sysconfig.get_paths()["stdlib"]`).

    tokenizer/                   byte-level BPE (4,096 tokens incl. 3 specials), trained on the
                                 stdlib's non-test .py files; Qwen-style ChatML template with
                                 {% generation %} markers, so assistant masks work
    chat_sample.jsonl            user asks what `module.name` does, assistant answers with the first
                                 paragraph of its docstring (parsed with `ast`, never imported)
    cpython_stdlib_lengths.txt   token count of every stdlib .py file, sorted by path

Deterministic: files are visited in sorted path order and the BPE trainer breaks ties by pair
order, so rerunning on the same Python version reproduces the same bytes (the script prints each
file's sha256 to check). Run: python scripts/make_bundled_data.py [--out src/padfree/data]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import platform
import re
import sysconfig
import tokenize
import zlib
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2/Qwen3's pre-tokenizer split: letters with one leading symbol, single digits, punctuation
# runs, newline runs and whitespace runs (Python indentation becomes a few whole tokens).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ChatML as Qwen writes it. The assistant's content and its <|im_end|> are inside
# {% generation %}, so `return_assistant_tokens_mask=True` marks exactly the tokens to train on,
# stop token included (the model must learn to end its turn).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# Build-specific or third-party files would make the data differ between machines.
SKIP_TOP = {"site-packages", "__pycache__"}
NOT_FOR_TRAINING = {"test", "tests", "idle_test"}  # test suites: huge, repetitive, full of odd bytes
NOT_DOCUMENTED = {"test", "idlelib", "lib2to3", "turtledemo", "ensurepip", "tests", "idle_test"}
QUESTIONS = ("What does `{}` do?", "Explain `{}`.", "What is `{}` for?")
MAX_ANSWER_CHARS = 400
MAX_PER_MODULE = 3


def stdlib_files(root: Path) -> list[Path]:
    """Every stdlib .py file, sorted by relative path; skips third-party and build-specific files."""
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_TOP or rel.parts[0].startswith("config-") or rel.name.startswith("_sysconfigdata"):
            continue
        if "__pycache__" in rel.parts:
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_source(path: Path) -> str:
    """The file decoded with its PEP 263 encoding; a few test files are deliberately undecodable."""
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return data.decode("utf-8", errors="replace")


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    # transformers 5 writes the template to chat_template.jinja; keep it in tokenizer_config.json
    # instead, where every transformers version (and Qwen's own checkpoints) put it: one file less.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def module_name(rel: Path) -> str | None:
    """'email/mime/text.py' -> 'email.mime.text'; None for private, test or script modules."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or parts[0] in NOT_DOCUMENTED or any(p in NOT_DOCUMENTED or p.startswith("_") for p in parts):
        return None
    return ".".join(parts)


def first_paragraph(doc: str, name: str) -> str:
    """The docstring's first prose paragraph, one line, cut to MAX_ANSWER_CHARS at a sentence end."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]
    # Old-style docstrings open with a signature line ("dumps(obj) -> str"); skip it.
    while paragraphs and re.match(rf"{re.escape(name)}\s*\(", paragraphs[0]):
        paragraphs.pop(0)
    text = paragraphs[0] if paragraphs else ""
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text[:MAX_ANSWER_CHARS]
    end = cut.rfind(". ")
    return cut[: end + 1] if end >= 100 else cut[: cut.rfind(" ")] + " ..."


def chat_samples(root: Path, files: list[Path]) -> list[dict]:
    samples = []
    for path in files:
        module = module_name(path.relative_to(root))
        if module is None:
            continue
        try:
            tree = ast.parse(read_source(path))
        except SyntaxError:
            continue
        taken = 0
        for node in tree.body:
            if taken == MAX_PER_MODULE:
                break
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            answer = first_paragraph(ast.get_docstring(node) or "", node.name)
            if len(answer) < 20:
                continue
            qualified = f"{module}.{node.name}"
            question = QUESTIONS[zlib.crc32(qualified.encode()) % len(QUESTIONS)].format(qualified)
            samples.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
            taken += 1
    return samples


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/padfree/data")
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    sources = [read_source(p) for p in files]
    training = [text for p, text in zip(files, sources) if not NOT_FOR_TRAINING & set(p.relative_to(root).parts)]
    tokenizer = train_tokenizer(training)
    save_tokenizer(tokenizer, args.out / "tokenizer")

    samples = chat_samples(root, files)
    with open(args.out / "chat_sample.jsonl", "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")

    lengths = [len(e.ids) for e in tokenizer.encode_batch(sources, add_special_tokens=False)]
    header = (
        f"# Token counts of the {len(files)} .py files of the CPython {platform.python_version()} standard library "
        "(site-packages, config-*/ and _sysconfigdata* excluded), sorted by path, with padfree/data/tokenizer. "
        "Made by scripts/make_bundled_data.py.\n"
    )
    (args.out / "cpython_stdlib_lengths.txt").write_text(header + "".join(f"{n}\n" for n in lengths))

    print(f"stdlib {root}: {len(files)} files, tokenizer trained on {len(training)}")
    print(f"tokenizer vocab {tokenizer.get_vocab_size()}, {len(samples)} chat samples, {sum(lengths):,} corpus tokens")
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(args.out)}  {path.stat().st_size:,} B  sha256 {sha256(path)}")


if __name__ == "__main__":
    main()
