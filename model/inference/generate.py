"""Batched report generation (greedy or beam search), plus the loss the trainer calls.

One call turns a batch of studies into one report each with a single `model.generate`: every view of
the batch is encoded in one ViT pass and padded views are masked, so a study's report does not depend
on what it was batched with.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from model.defaults import GenerationSettings, decoder_positions
from model.imaging.preprocess import pixel_values
from model.inference.text import clean_report
from model.network.bundle import Bundle, resolve_device
from model.network.multiview import XrqEncoderDecoder

__all__ = ["GenerationSettings", "decode_reports", "device_view_mask", "generate", "generate_ids", "loss",
           "on_the_trainers_path", "record", "report_labels", "resolve_device"]

T = TypeVar("T")


class _UnpaddedDecoderFilter(logging.Filter):
    """Drops generate's warning that a batch came without an `attention_mask`.

    Under that name generate expects the encoder-side mask, which xrq hands over ready-made
    (`cross_attention_mask`) or not at all when every view is real; the decoder's inputs are never
    padded (every study starts from the same token), so the warning never applies here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "attention mask is not set with a batched input" not in record.getMessage()


@contextlib.contextmanager
def _unpadded_warning_dropped() -> Iterator[None]:
    """`_UnpaddedDecoderFilter` on transformers' generation log for one call, then off (importing xrq
    changes no logging)."""
    log, dropped = logging.getLogger("transformers.generation.utils"), _UnpaddedDecoderFilter()
    log.addFilter(dropped)
    try:
        yield
    finally:
        log.removeFilter(dropped)


def check_fits(bundle: Bundle, settings: GenerationSettings, batch_size: int | None = None) -> None:
    """`GenerationSettings.check_fits` for this model's decoder."""
    settings.check_fits(decoder_positions(bundle.model.config.decoder), batch_size)


def record(settings: GenerationSettings, device: torch.device) -> dict[str, Any]:
    """What to store with a report: the settings, the device and the compute dtype used there."""
    return {**settings.as_dict(), "device": str(device), "dtype": _compute_dtype(device)}


def generate(
    bundle: Bundle,
    studies: Sequence[Sequence[Image.Image]],
    settings: GenerationSettings = GenerationSettings(),  # frozen, so a shared default is safe
    *,
    device: str | torch.device | None = None,
) -> list[str]:
    """One report per study (a study is 1..N images), all studies in one batched generate.

    Runs under `torch.inference_mode()`, in bf16 autocast on CUDA. `device` defaults to where the
    model already is; naming another one moves the bundle's model there (and it stays there).
    """
    if not studies:
        return []
    pixels, mask = pixel_values(bundle.processor, studies, bundle.max_views)  # (B, V, 3, H, W), (B, V)
    return generate_from_pixels(bundle, pixels, mask, settings, device=device)


def generate_from_pixels(
    bundle: Bundle,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    settings: GenerationSettings = GenerationSettings(),
    *,
    device: str | torch.device | None = None,
    bf16: bool = True,
) -> list[str]:
    """`generate` for studies already preprocessed: (B, V, 3, H, W) pixels and their (B, V) view mask.

    `bf16=False` keeps fp32 on CUDA too (the trainer's --no-bf16); on a CPU it changes nothing.
    The trainer's path: weights stay fp32 (autocast). Serving uses `model.inference.engine.Engine`.
    """
    if not len(pixels):
        return []
    ids = on_the_trainers_path(bundle, pixels, settings, lambda model, on_device: generate_ids(
        model, on_device, mask, settings), device=device, bf16=bf16)
    return decode_reports(bundle.tokenizer, ids)


def on_the_trainers_path(
    bundle: Bundle,
    pixels: torch.Tensor,
    settings: GenerationSettings,
    run: Callable[[XrqEncoderDecoder, torch.Tensor], T],
    *,
    device: str | torch.device | None = None,
    bf16: bool = True,
) -> T:
    """`run(model, pixels on its device)` the trainer's way: the settings checked, the model moved to
    `device` (default: where it is) in eval mode, under inference mode and `autocast(device, bf16)`.
    What `generate_from_pixels` and `confidence.drafts_from_pixels` share."""
    check_fits(bundle, settings)
    dev = bundle.device if device is None else resolve_device(device)
    cast(torch.nn.Module, bundle.model).to(dev).eval()
    with torch.inference_mode(), autocast(dev, bf16):
        return run(bundle.model, pixels.to(dev, non_blocking=True))


def autocast(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager[Any]:
    """The trainer's compute policy: bf16 autocast on CUDA (unless `bf16` is off), fp32 elsewhere."""
    return _autocast(device) if bf16 else contextlib.nullcontext()


def generate_ids(
    model: XrqEncoderDecoder,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    settings: GenerationSettings,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """(B, 1 + new tokens) ids for (B, V, 3, H, W) pixels already on the model's device; the shared core.

    `mask` (B, V) is best left on the host: whether the batch has padded views is read there, for
    free. Every real view is encoded once, and the cross-attention mask is built once per batch and
    carried through `generate` (expanded per beam with the encoder outputs) instead of being
    rebuilt at every step. `generate_kwargs` add to the settings (a cache implementation, a
    compile config). Call under `torch.inference_mode()`.
    """
    view_mask = device_view_mask(mask, pixels.device)  # (B, V) or None: every view is real
    encoded = model.encode_views(pixels, view_mask)  # (B, V*T, C)
    cross = model.cross_attention_mask(view_mask, cast(torch.Tensor, encoded.last_hidden_state))
    if cross is not None:
        generate_kwargs["cross_attention_mask"] = cross  # (B, 1, 1, V*T)
    # The start token is real: saying so spares GPT-2 its per-step "is this padding?" look at the ids.
    started = torch.ones(len(pixels), 1, dtype=torch.long, device=pixels.device)  # (B, 1)
    with _unpadded_warning_dropped():
        return cast(torch.Tensor, model.generate(
            encoder_outputs=encoded, decoder_attention_mask=started, **settings.generate_kwargs(), **generate_kwargs,
        ))


def device_view_mask(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The (B, V) view mask on `device`, or None when every view is real: the one masking policy.

    Decided on the mask where it lies (the host, normally, where it costs no GPU sync). No mask
    lets the decoder's attention skip masking (and on CUDA use its fastest kernels); the reports
    are the same either way.
    """
    if bool(mask.all()):
        return None
    return mask.to(device, dtype=torch.bool)


def decode_reports(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor) -> list[str]:
    """(B, L) generated ids → one report each: each sequence decoded whole, special tokens dropped, then
    cleaned (`clean_report`: no U+FFFD from partial bytes, no control characters, whitespace collapsed)."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [clean_report(text) for text in texts]


def report_labels(
    tokenizer: PreTrainedTokenizerFast, reports: Sequence[str], max_length: int
) -> torch.Tensor:
    """(B, L) training labels: each report's tokens then eos, padded with -100 (ignored by the loss).

    Generation starts from the decoder start token (<|endoftext|>) and stops at eos, so labels end
    with eos for the model to learn where a report stops. Reports longer than max_length are cut.
    """
    eos = tokenizer.eos_token_id
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in reports]
    rows = [[*ids[: max_length - 1], eos] for ids in tokens]
    labels = torch.full((len(rows), max(map(len, rows), default=0)), -100, dtype=torch.long)  # (B, L)
    for i, row in enumerate(rows):
        labels[i, : len(row)] = torch.tensor(row)
    return labels


def loss(
    bundle: Bundle, pixel_values: torch.Tensor, view_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean token cross-entropy of `labels` (B, L) given the studies' views: the training objective.

    pixel_values (B, V, 3, H, W) and view_mask (B, V) come from `preprocess.pixel_values`; they are
    moved to the model's device. Gradients flow (call it outside inference mode).
    """
    dev = bundle.device
    out = bundle.model(pixel_values=pixel_values.to(dev), view_mask=device_view_mask(view_mask, dev),
                       labels=labels.to(dev))
    return out.loss


def _compute_dtype(device: torch.device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (weights stay fp32); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
