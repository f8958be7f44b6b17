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

Two other readings of "where" answer a different question, and are chosen with `method`:

- `relevance`: the cross-attention weighted by its gradient and carried back through the encoder's
  self-attention (Chefer et al. 2021): which patches the attention that raised the words came from.
- `occlusion`: how far each sentence's probability falls with each window of patches painted over:
  what the sentence needs in the image. On the synthetic benchmark it is the one that falls on the painted
  finding (README); the raw attention does not, because the encoder has already mixed the patches.

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

from model.defaults import ATTENTION_METHODS
from model.errors import ModelError
from model.imaging.preprocess import pixel_values
from model.inference.text import clean_report
from model.network.bundle import Bundle

__all__ = ["METHODS", "SentenceAttention", "StudyAttention", "attention_maps", "marked_words", "sentence_spans"]

SENTENCE_ENDS = (".", "!", "?")
LAYERS = "mean over all decoder layers and heads"
METHODS = ATTENTION_METHODS
DESCRIBED = dict(zip(METHODS, (  # what a map is, in words, by method: the head of its picture
    LAYERS, "gradient-weighted, carried back through the encoder",
    "how far each sentence's probability falls with each window painted over"), strict=True))
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
    averaged: str = LAYERS  # what a map is, in words
    method: str = "attention"  # one of METHODS


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


def attention_maps(bundle: Bundle, views: Sequence[Image.Image], token_ids: Sequence[int],
                   method: str = "attention") -> StudyAttention:
    """Per sentence of the report `token_ids` (as stored: start token excluded), per view, where the
    decoder looked (see the module docstring). `views` are the study's decoded images, in order; the
    model sees the first `bundle.max_views`. `method`: "attention", the raw cross-attention;
    "relevance", that attention weighted by what raised the words, carried back through the encoder
    (`relevance`); "occlusion", how much the words' probability needs each window of patches
    (`occlusion`). A view none of which the words needed has a map of zeros and a share of 0."""
    if method not in METHODS:
        raise ModelError(f"no attention method {method!r}: one of {', '.join(METHODS)}")
    if not token_ids:
        raise ModelError("this report has no stored tokens to replay: it was written before xrq stored them")
    if not views:
        raise ModelError("the study has no readable image to attend to")
    pixels, _mask = pixel_values(bundle.processor, [list(views)], bundle.max_views)  # (1, V, 3, H, W)
    v = pixels.shape[1]
    enc = cast(Any, bundle.model.config.encoder)
    grid = (enc.image_size // enc.patch_size, enc.image_size // enc.patch_size)
    spans = sentence_spans(bundle.tokenizer, token_ids)
    if method == "attention":
        weights = cross_attention(bundle, pixels, token_ids)  # (n, V*T)
        rows = [weights[start:end].mean(dim=0) for _, start, end in spans]
    elif not spans:
        rows = []
    else:
        replay = relevance if method == "relevance" else occlusion
        rows = list(replay(bundle, pixels, token_ids, [(start, end) for _, start, end in spans]))
    sentences = []
    for (text, start, end), row in zip(spans, rows, strict=True):
        mean = row.reshape(v, -1).double()  # (V, T): T = CLS + patches
        if grid[0] * grid[1] != mean.shape[-1] - 1:
            raise ModelError(f"expected {grid[0]}x{grid[1]} patches and a CLS token per view, got {mean.shape[-1]}")
        share = mean.sum(dim=1)  # (V,)
        patches = mean[:, 1:]
        total = patches.sum(dim=1, keepdim=True)
        # Each view's patches sum to one, but a view none of which the words needed (occlusion: no window
        # lowered them; relevance: no gradient) keeps a map of zeros, drawn blank: an even map would be
        # drawn all hot, as if everything mattered.
        maps = torch.where(total > 0, patches / total.clamp(min=1e-300), torch.zeros_like(patches))
        views_share = share / share.sum() if share.sum() > 0 else torch.zeros_like(share)
        sentences.append(SentenceAttention(text, start, end, maps.reshape(v, *grid).numpy(),
                                           tuple(views_share.tolist())))
    return StudyAttention(sentences, v, grid, DESCRIBED[method], method)


def relevance(bundle: Bundle, pixels: torch.Tensor, token_ids: Sequence[int],
              spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(S, V*T) relevance of each input token of each view for each span [start, end) of the report.

    Gradient-weighted attention carried back through the encoder (Chefer, Gur and Wolf, "Generic
    attention-model explainability for interpreting bi-modal and encoder-decoder transformers",
    ICCV 2021), for the span's log-probability (the sum of its tokens' under the model):

    - every attention map A of a layer is weighted by its gradient, Ā = mean over heads of
      (∂logp/∂A ⊙ A)⁺: the heads and positions that raised the span's probability, not every weight;
    - the encoder's self-attention: R = I, then R ← R + Ā·R layer by layer, per view; its mixing part
      (R − I) normalised row by row, plus I (what each output token carries of each input patch);
    - the decoder's cross-attention of the span's positions, summed over layers, through that R.

    The decoder's own self-attention term of the paper is left out: a sentence's map is read from the
    positions that wrote its tokens, as `cross_attention`'s is. The raw cross-attention says where the
    decoder drew from among the encoder's outputs; those outputs are already mixed across patches by
    the encoder, and the relevance undoes that mixing, weighted by what mattered for the words.
    """
    model = bundle.model
    dev = bundle.device
    start = model.config.decoder_start_token_id
    encoder, decoder = cast(Any, model.encoder), cast(Any, model.decoder)
    b, v = pixels.shape[:2]
    if not spans:
        return torch.zeros(0, v * ((encoder.config.image_size // encoder.config.patch_size) ** 2 + 1))
    # Gradients even when the caller is in inference mode; the pixels ask for them, so the graph exists
    # whether or not the weights do.
    with _EAGER, torch.inference_mode(False), torch.enable_grad():
        inputs = torch.tensor([[start, *token_ids[:-1]]], device=dev)  # (1, n); made here: not inference tensors
        targets = torch.tensor(list(token_ids), device=dev)
        dtype = next(cast(torch.nn.Module, model).parameters()).dtype
        configs = _configs(encoder, decoder)
        before = [c._attn_implementation for c in configs]
        for c in configs:
            c._attn_implementation = "eager"
        try:
            flat = pixels.to(dev, dtype=dtype).reshape(b * v, *pixels.shape[2:]).clone().requires_grad_(True)
            encoded = encoder(pixel_values=flat, output_attentions=True, return_dict=True)
            tokens = encoded.last_hidden_state  # (V, T, C)
            if hasattr(model, "view_join"):
                tokens = model.view_join(tokens.reshape(b, v, *tokens.shape[1:]))
            hidden = tokens.reshape(1, -1, tokens.shape[-1])  # (1, V*T, C)
            if hasattr(model, "enc_to_dec_proj"):
                hidden = model.enc_to_dec_proj(hidden)
            out = decoder(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                          encoder_hidden_states=hidden, output_attentions=True, use_cache=False, return_dict=True)
            logp = out.logits[0].float().log_softmax(-1).gather(1, targets[:, None])[:, 0]  # (n,)
            self_maps, cross_maps = list(encoded.attentions or ()), list(out.cross_attentions or ())
            if not self_maps or not cross_maps:
                raise ModelError("this model returns no attention weights to carry the relevance back")
            rows = []
            for first, end in spans:
                grads = torch.autograd.grad(logp[first:end].sum(), self_maps + cross_maps, retain_graph=True)
                weighted = [(g * a).float().clamp(min=0).mean(dim=1).detach()
                            for g, a in zip(grads, self_maps + cross_maps, strict=True)]
                mixing = _encoder_relevance(weighted[:len(self_maps)])  # (V, T, T)
                cross = sum(w[0, first:end].sum(dim=0) for w in weighted[len(self_maps):])  # (V*T,)
                per_view = cast(torch.Tensor, cross).reshape(v, 1, -1)  # (V, 1, T)
                rows.append(torch.bmm(per_view, mixing).reshape(-1))  # (V*T,)
        finally:
            for c, implementation in zip(configs, before, strict=True):
                c._attn_implementation = implementation
    return torch.stack(rows).cpu()


def _configs(*models: Any) -> list[Any]:
    """Every distinct config the modules of `models` read their attention implementation from: a
    model's layers can hold their own (a ViT built inside an encoder-decoder keeps the one it was
    built with), so switching the top one's is not enough for the encoder to return its weights."""
    seen: dict[int, Any] = {}
    for model in models:
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                seen.setdefault(id(config), config)
    return list(seen.values())


OCCLUSION_WINDOWS = 7  # windows per side of a view that occlusion paints over in turn, at most


def occlusion(bundle: Bundle, pixels: torch.Tensor, token_ids: Sequence[int],
              spans: Sequence[tuple[int, int]], window: int | None = None, batch: int = 16) -> torch.Tensor:
    """(S, V*T) how much each patch of each view holds up each span [start, end) of the report.

    Each window of `window` x `window` patches of each view in turn is painted over with the
    processor's mean grey (0 after normalisation) and the report's tokens are replayed, teacher-forced,
    on the occluded study; a window's weight for a span is how far the span's log-probability (the sum
    of its tokens') falls without it (a rise counts as nothing), shared evenly by its patches. The CLS
    slot gets none. This asks the model, not its internals: the map is on what the sentence needs in
    the image. The default window keeps at most OCCLUSION_WINDOWS x OCCLUSION_WINDOWS of them a view:
    one patch for a 7x7 grid (the small presets), 2x2 for 14x14 (tiny, base): 49 passes a view, `batch` at a
    time, each a whole encoder and decoder pass: for a two-view study 0.7 s with small-v2 and 97 s with
    a base-sized model on one shared CPU core; on a GPU a batch of passes takes milliseconds.
    """
    model = bundle.model
    dev = bundle.device
    start = model.config.decoder_start_token_id
    inputs = torch.tensor([[start, *token_ids[:-1]]], device=dev)  # (1, n)
    targets = torch.tensor(list(token_ids), device=dev)
    enc = cast(Any, model.config.encoder)
    side, size = enc.image_size // enc.patch_size, enc.patch_size
    step = window or -(-side // OCCLUSION_WINDOWS)  # patches per window side
    v = pixels.shape[1]
    dtype = next(cast(torch.nn.Module, model).parameters()).dtype
    study = pixels.to(dev, dtype=dtype)

    def logprobs(studies: torch.Tensor) -> torch.Tensor:  # (B, V, 3, H, W) -> (B, n)
        ids = inputs.expand(studies.shape[0], -1)
        logits = model(pixel_values=studies, view_mask=None, decoder_input_ids=ids,
                       decoder_attention_mask=torch.ones_like(ids)).logits
        return logits.float().log_softmax(-1).gather(2, targets[None, :, None].expand(studies.shape[0], -1, 1))[..., 0]

    corners = range(0, side, step)
    holes = [(view, row, col) for view in range(v) for row in corners for col in corners]
    falls_of = []  # per chunk (holes in it, n): the whole study's log-probabilities minus the occluded ones
    # The lock: another thread's replay may switch the shared model to eager attention mid-pass.
    with _EAGER, torch.inference_mode():
        for first in range(0, len(holes), batch):
            taken = holes[first:first + batch]
            chunk = study.repeat(len(taken) + 1, 1, 1, 1, 1)  # row 0 whole: compared within one batch shape
            for i, (view, row, col) in enumerate(taken, start=1):
                chunk[i, view, :, row * size:(row + step) * size, col * size:(col + step) * size] = 0
            out = logprobs(chunk)
            falls_of.append(out[:1] - out[1:])
        fallen = torch.cat(falls_of).cpu()  # (holes, n)
    rows = []
    for first, end in spans:
        falls = fallen[:, first:end].sum(dim=1).clamp(min=0)  # (holes,)
        drop = torch.zeros(v, side, side, dtype=falls.dtype)
        for fall, (view, row, col) in zip(falls.tolist(), holes, strict=True):
            patches = drop[view, row:row + step, col:col + step]
            patches += fall / patches.numel()
        rows.append(torch.cat([drop.new_zeros(v, 1), drop.reshape(v, -1)], dim=1).reshape(-1))  # (V*T,), CLS first
    return torch.stack(rows) if rows else torch.zeros(0, v * (side * side + 1))


def _encoder_relevance(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """(V, T, T): R = I, R ← R + Ā·R over the layers' gradient-weighted maps Ā (V, T, T); then R − I
    normalised so each row sums to one (a row of zeros stays zero), plus I."""
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device).expand_as(layers[0])
    r = eye.clone()
    for a in layers:
        r = r + torch.bmm(a, r)
    mixing = r - eye
    total = mixing.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mixing / total.clamp(min=1e-12), mixing) + eye


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
