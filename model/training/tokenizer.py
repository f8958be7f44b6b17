"""A byte-level BPE trained on the training reports, for decoders trained from scratch.

GPT-2's 50,257-token vocabulary is what a pretrained GPT-2 needs, but a decoder trained from scratch
on radiology reports pays for it twice: a 50k-row embedding and output layer (most of a small model's
weights and of its step time) and longer token sequences, since report words are split into general
English pieces. A BPE fitted to the training reports makes most report words one token.

Same scheme as GPT-2 (byte-level, so any text round-trips; no prefix space), and `<|endoftext|>` is
bos, eos and pad, as in GPT-2, so generation and labels work the same way with either tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: TrainConfig (and so `xrq --help`) reads DEFAULT_VOCAB_SIZE from here
    from transformers import PreTrainedTokenizerFast

SPECIAL = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 2000


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Fit a byte-level BPE of at most `vocab_size` tokens (id 0 is <|endoftext|>) to `texts`.

    min_frequency 1: on a real training set the vocabulary cap, not the frequency floor, decides which
    merges are kept; on a handful of reports (demos, tests) every word becomes one token.
    The result is deterministic for the same texts in the same order.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=[SPECIAL],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIAL, eos_token=SPECIAL,
                                   pad_token=SPECIAL)


def save_trained_tokenizer(texts: Iterable[str], folder: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train and save to `folder` (tokenizer.json + config), the form `bundle.build(tokenizer=...)` reads."""
    folder = Path(folder)
    train_tokenizer(texts, vocab_size).save_pretrained(folder)
    return folder
