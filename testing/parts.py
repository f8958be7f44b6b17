"""Tiny pretrained parts (a ViT encoder, a GPT-2 decoder, optionally its own tokenizer) saved to a folder,
for tests and benchmarks that build a model from parts as `xrq model init --encoder --decoder` does."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from model.training.tokenizer import save_trained_tokenizer


def tiny_parts(tmp_path: Path, *, with_tokenizer: bool) -> tuple[str, str]:
    """(encoder folder, decoder folder) under `tmp_path`; the decoder has its own trained tokenizer if asked."""
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=32))
    vit.save_pretrained(tmp_path / "vit")
    vocab = 50257
    if with_tokenizer:
        tok = save_trained_tokenizer(["Heart size normal.", "No pleural effusion."], tmp_path / "gpt2", 300)
        vocab = len(AutoTokenizer.from_pretrained(tok, trust_remote_code=False))
    GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=1, n_head=2, n_positions=64, vocab_size=vocab)).save_pretrained(
        tmp_path / "gpt2")
    return str(tmp_path / "vit"), str(tmp_path / "gpt2")
