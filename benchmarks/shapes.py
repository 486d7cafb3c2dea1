"""Model shapes for benchmarks: random weights, never downloaded."""

from __future__ import annotations

from padfree.tiny import tiny_config

# Qwen3.5-0.8B: hidden 1024, 24 layers (3 GDN : 1 attention), 16/16 GDN heads of dim 128,
# 8 query / 2 KV attention heads of dim 256, vocab 248,320, tied embeddings.
_QWEN3_5_0_8B = dict(
    vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
    num_attention_heads=8, num_key_value_heads=2, head_dim=256,
    linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, tie_word_embeddings=True, max_position_embeddings=262144,
)  # fmt: skip
# A ~4B shape: hidden 2560, 32 layers, 16 key / 32 value GDN heads.
_QWEN3_5_4B = dict(
    _QWEN3_5_0_8B, hidden_size=2560, intermediate_size=9216, num_hidden_layers=32,
    num_attention_heads=16, num_key_value_heads=4, linear_num_value_heads=32,
)  # fmt: skip


def shape_config(name: str):
    from transformers import Qwen3_5TextConfig

    if name == "tiny":
        return tiny_config("qwen3_5")
    if name == "0.8b":
        return Qwen3_5TextConfig(**_QWEN3_5_0_8B)
    if name == "4b":
        return Qwen3_5TextConfig(**_QWEN3_5_4B)
    raise ValueError(f"unknown shape {name!r}; choose tiny, 0.8b or 4b.")
