"""Where the model looked: each sentence's cross-attention over each view, from one teacher-forced pass.

A stored report's tokens (`reports.token_ids`) are fed back to the decoder with the study's views, once,
with attention weights returned (eager attention for that one pass; generation keeps its fast kernels).
The query at position i is the one that wrote token i, so a sentence's map is the cross-attention of
the positions that wrote its tokens, averaged over:

- every head and every decoder layer (the mean over layers: single layers of a small decoder are
  noisy, and the mean is what shows where a sentence's evidence came from overall);
- the sentence's tokens (its closing full stop included).

Each view's share is split off first (how much of the sentence's attention went to that view, its
CLS token included), then the view's patches are renormalised, so every map sums to one over the
view's patches: a map says where in that view, the share says how much that view. Nothing here
touches the batch path: `generate` and the engine never ask for attention.

`attention_maps` is the entry point for any caller (`xrq show --attention`, the review application);
`model.figures.attention` draws the maps over the images.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from model.errors import ModelError
from model.imaging.preprocess import pixel_values
from model.inference.text import clean_report
from model.network.bundle import Bundle

__all__ = ["SentenceAttention", "StudyAttention", "attention_maps", "marked_words", "sentence_spans"]

SENTENCE_ENDS = (".", "!", "?")
LAYERS = "mean over all decoder layers and heads"
_EAGER = threading.Lock()  # the attention implementation is switched on the shared model for one pass


@dataclass(frozen=True)
class SentenceAttention:
    """One sentence: its text, its tokens' span [start, end) in the report's token ids, and per view a
    (grid_h, grid_w) map summing to one over the view's patches, with the view's share of attention."""

    text: str
    start: int
    end: int
    maps: np.ndarray  # (V, grid_h, grid_w) float64
    view_share: tuple[float, ...]  # (V,), sums to 1 over the views


@dataclass(frozen=True)
class StudyAttention:
    sentences: list[SentenceAttention]
    views: int
    grid: tuple[int, int]  # patches per view, (rows, columns)
    averaged: str = LAYERS


def sentence_spans(tokenizer: PreTrainedTokenizerFast, token_ids: Sequence[int]) -> list[tuple[str, int, int]]:
    """(text, start, end) of each sentence of a report's tokens; special tokens (end of text) belong to none.

    A sentence ends after a token whose text ends with `.`, `!` or `?`; trailing words without one
    make a last sentence. Section markers (`model.metrics.sections`) are sentences of their own.
    """
    special = set(tokenizer.all_special_ids)
    spans: list[tuple[str, int, int]] = []
    start: int | None = None
    for i, tid in enumerate(token_ids):
        if tid in special:
            if start is not None:
                spans.append((_text(tokenizer, token_ids[start:i]), start, i))
                start = None
            continue
        if start is None:
            start = i
        piece = _piece(tokenizer, tid).strip()
        if piece.endswith(SENTENCE_ENDS) or piece.endswith(":"):
            spans.append((_text(tokenizer, token_ids[start:i + 1]), start, i + 1))
            start = None
    if start is not None:
        spans.append((_text(tokenizer, token_ids[start:]), start, len(token_ids)))
    return [s for s in spans if s[0]]


def attention_maps(bundle: Bundle, views: Sequence[Image.Image], token_ids: Sequence[int]) -> StudyAttention:
    """Per sentence of the report `token_ids` (as stored: start token excluded), per view, where the
    decoder looked (see the module docstring). `views` are the study's decoded images, in order; the
    model sees the first `bundle.max_views`."""
    if not token_ids:
        raise ModelError("this report has no stored tokens to replay: it was written before xrq stored them")
    if not views:
        raise ModelError("the study has no readable image to attend to")
    pixels, _mask = pixel_values(bundle.processor, [list(views)], bundle.max_views)  # (1, V, 3, H, W)
    weights = cross_attention(bundle, pixels, token_ids)  # (n, V*T)
    v = pixels.shape[1]
    per_view = weights.reshape(len(token_ids), v, -1)  # (n, V, T): T = CLS + patches
    enc = cast(Any, bundle.model.config.encoder)
    grid = (enc.image_size // enc.patch_size, enc.image_size // enc.patch_size)
    if grid[0] * grid[1] != per_view.shape[-1] - 1:
        raise ModelError(f"expected {grid[0]}x{grid[1]} patches and a CLS token per view, got {per_view.shape[-1]}")
    sentences = []
    for text, start, end in sentence_spans(bundle.tokenizer, token_ids):
        mean = per_view[start:end].mean(dim=0).double()  # (V, T)
        share = mean.sum(dim=1)  # (V,)
        maps = mean[:, 1:] / mean[:, 1:].sum(dim=1, keepdim=True)  # (V, P): each view's patches sum to one
        sentences.append(SentenceAttention(text, start, end, maps.reshape(v, *grid).numpy(),
                                           tuple((share / share.sum()).tolist())))
    return StudyAttention(sentences, v, grid)


def cross_attention(bundle: Bundle, pixels: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """(n, V*T) cross-attention of the positions that wrote the n tokens, averaged over layers and heads.

    One teacher-forced pass: decoder inputs are the start token then the tokens but the last, so the
    output at position i is the one that chose token i. The decoder runs with eager attention for
    this pass only (fused kernels return no weights) and is switched back after.
    """
    model = bundle.model
    dev = bundle.device
    start = model.config.decoder_start_token_id
    inputs = torch.tensor([[start, *token_ids[:-1]]], device=dev)  # (1, n)
    decoder = cast(Any, model.decoder)
    with _EAGER, torch.inference_mode():
        dtype = next(cast(torch.nn.Module, model).parameters()).dtype
        hidden = model.encode_views(pixels.to(dev, dtype=dtype), None).last_hidden_state  # (1, V*T, C_enc)
        if hasattr(model, "enc_to_dec_proj"):
            hidden = model.enc_to_dec_proj(hidden)
        before = decoder.config._attn_implementation
        decoder.set_attn_implementation("eager")
        try:
            out = decoder(input_ids=inputs, attention_mask=torch.ones_like(inputs),  # one sequence: no padding
                          encoder_hidden_states=hidden, output_attentions=True, use_cache=False, return_dict=True)
        finally:
            decoder.set_attn_implementation(before)
    layers = out.cross_attentions  # per layer (1, heads, n, V*T)
    if not layers:
        raise ModelError("this model's decoder returns no cross-attention weights")
    return torch.stack([a[0].float() for a in layers]).mean(dim=(0, 1)).cpu()  # (n, V*T)


def marked_words(tokenizer: PreTrainedTokenizerFast, token_ids: Sequence[int], token_logprobs: Sequence[float],
                 threshold: float) -> tuple[str, int]:
    """The report with each word the model gave a probability below `threshold` in [brackets], and how many.

    A word is a run of tokens up to the next one that starts with a space; its probability is the
    product of its tokens' probabilities. Special tokens are left out.
    """
    special = set(tokenizer.all_special_ids)
    words: list[tuple[list[int], float]] = []  # (the word's token ids, summed log-probability)
    for tid, logprob in zip(token_ids, token_logprobs, strict=True):
        if tid in special:
            continue
        if not words or _piece(tokenizer, tid)[:1].isspace():
            words.append(([tid], logprob))
        else:
            words[-1] = ([*words[-1][0], tid], words[-1][1] + logprob)
    marked, low = [], 0
    cut = math.log(threshold) if threshold > 0 else -math.inf
    for ids, logprob in words:
        # Decoded whole, then cleaned as reports are: a character split over byte-level tokens is whole again.
        word = clean_report(str(tokenizer.decode(ids)))
        if word and logprob < cut:
            low += 1
            word = f"[{word}]"
        marked.append(word)
    return " ".join(w for w in marked if w), low


def _text(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int]) -> str:
    return " ".join(str(tokenizer.decode(list(ids), skip_special_tokens=True)).split())


def _piece(tokenizer: PreTrainedTokenizerFast, token_id: int) -> str:
    """One token's text, its leading space kept (GPT-2's byte-level tokens carry their spaces)."""
    return str(tokenizer.decode([token_id]))
