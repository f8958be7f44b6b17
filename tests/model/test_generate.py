"""Batched generation on real X-rays with a tiny random model: masking, beams, settings, loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from PIL import Image

from model.errors import ModelError
from model.imaging.preprocess import pixel_values
from model.inference.generate import GenerationSettings, generate, loss, record, report_labels, resolve_device
from model.network.bundle import Bundle, build
from tests.conftest import EXAMPLES


def _xray(name: str) -> Image.Image:
    return Image.open(EXAMPLES / name).convert("L")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build("tiny", seed=0)


@pytest.fixture(scope="module")
def single() -> list[Image.Image]:
    return [_xray("CXR25_IM-1024-2001.png")]


@pytest.fixture(scope="module")
def triple() -> list[Image.Image]:
    return [_xray("1000_IM-0003-1001.dcm.png"), _xray("1000_IM-0003-2001.dcm.png"),
            _xray("1000_IM-0003-3001.dcm.png")]


def test_pixel_values_pad_and_mask(bundle: Bundle, single: list[Image.Image],
                                   triple: list[Image.Image]) -> None:
    pixels, mask = pixel_values(bundle.processor, [single, triple], max_views=4)
    assert pixels.shape == (2, 3, 3, 224, 224) and pixels.dtype == torch.float32
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    assert torch.equal(pixels[0, 0, 0], pixels[0, 0, 1])  # gray copied to all three channels
    assert not pixels[0, 1:].any()  # padded views are zeros
    alone, _ = pixel_values(bundle.processor, [triple], max_views=4)
    assert torch.equal(alone[0], pixels[1])


def test_pixel_values_keeps_first_views(bundle: Bundle, single: list[Image.Image],
                                        triple: list[Image.Image]) -> None:
    pixels, mask = pixel_values(bundle.processor, [triple, single], max_views=2)
    assert pixels.shape[:2] == (2, 2) and mask.tolist() == [[True, True], [True, False]]
    first_two, _ = pixel_values(bundle.processor, [triple[:2]], max_views=4)
    assert torch.equal(pixels[0], first_two[0])
    with pytest.raises(ModelError, match="no images"):
        pixel_values(bundle.processor, [single, []], max_views=2)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_padding_invariance(bundle: Bundle, single: list[Image.Image], triple: list[Image.Image],
                            num_beams: int) -> None:
    """A study's report does not depend on what it is batched with."""
    settings = GenerationSettings(num_beams=num_beams, max_new_tokens=20)
    together = generate(bundle, [single, triple], settings)
    assert together == [generate(bundle, [single], settings)[0], generate(bundle, [triple], settings)[0]]
    assert together[0] != together[1]


def _first_logits(bundle: Bundle, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    start = torch.full((pixels.shape[0], 1), 50256)
    with torch.inference_mode():
        return bundle.model(pixel_values=pixels, view_mask=mask, decoder_input_ids=start).logits[:, -1]


def test_mask_is_what_keeps_padding_out(bundle: Bundle, single: list[Image.Image],
                                        triple: list[Image.Image]) -> None:
    """Without the mask the padded views leak in: the invariance test above can fail."""
    pixels, mask = pixel_values(bundle.processor, [single, triple], max_views=4)
    alone, alone_mask = pixel_values(bundle.processor, [single], max_views=4)
    reference = _first_logits(bundle, alone, alone_mask)[0]
    torch.testing.assert_close(_first_logits(bundle, pixels, mask)[0], reference)
    leaked = _first_logits(bundle, pixels, torch.ones_like(mask))[0]
    assert (leaked - reference).abs().max() > 1e-3


def test_images_drive_the_report(bundle: Bundle) -> None:
    names = ["CXR25_IM-1024-2001.png", "CXR303_IM-1404-1001.png", "CXR3_IM-1384-1001.png",
             "CXR54_IM-2145-1001.png"]
    studies = [[_xray(n)] for n in names]
    pixels, mask = pixel_values(bundle.processor, studies, max_views=1)
    logits = _first_logits(bundle, pixels, mask)
    assert (logits[0] - logits[1]).abs().max() > 1e-2
    reports = generate(bundle, studies, GenerationSettings(max_new_tokens=8))
    assert len(set(reports)) == len(studies) and all(reports)


def test_greedy_and_beam_are_deterministic(bundle: Bundle, single: list[Image.Image],
                                           triple: list[Image.Image]) -> None:
    for settings in (GenerationSettings(max_new_tokens=10), GenerationSettings(num_beams=2, max_new_tokens=10,
                                                                                length_penalty=0.5)):
        first = generate(bundle, [triple, single], settings)
        assert first == generate(bundle, [triple, single], settings)
        assert len(first) == 2 and all(isinstance(r, str) for r in first)
    assert generate(bundle, []) == []


def test_generate_accepts_view_mask_by_its_own_name(bundle: Bundle, single: list[Image.Image],
                                                    triple: list[Image.Image]) -> None:
    pixels, mask = pixel_values(bundle.processor, [single, triple], max_views=4)
    kwargs = GenerationSettings(num_beams=2, max_new_tokens=8).generate_kwargs()
    with torch.inference_mode():
        by_view_mask = bundle.model.generate(pixel_values=pixels, view_mask=mask, **kwargs)
        by_attention_mask = bundle.model.generate(pixel_values=pixels, attention_mask=mask, **kwargs)
    assert torch.equal(by_view_mask, by_attention_mask)


def test_no_repeat_ngram_size_is_wired(bundle: Bundle, single: list[Image.Image]) -> None:
    pixels, mask = pixel_values(bundle.processor, [single], max_views=4)
    kwargs = GenerationSettings(max_new_tokens=20, no_repeat_ngram_size=1).generate_kwargs()
    with torch.inference_mode():
        ids = bundle.model.generate(pixel_values=pixels, view_mask=mask, **kwargs)[0, 1:].tolist()
    assert len(ids) == len(set(ids))


def test_settings_as_dict_and_record() -> None:
    settings = GenerationSettings(num_beams=4, max_new_tokens=30, length_penalty=1.2, no_repeat_ngram_size=3)
    assert settings.as_dict() == {"num_beams": 4, "max_new_tokens": 30, "length_penalty": 1.2,
                                  "no_repeat_ngram_size": 3, "search": "beam"}
    assert GenerationSettings().as_dict()["search"] == "greedy"
    assert "length_penalty" not in GenerationSettings().generate_kwargs()
    rec = record(settings, torch.device("cpu"))
    assert rec["device"] == "cpu" and rec["dtype"] == "float32" and rec["num_beams"] == 4
    for bad in ({"num_beams": 0}, {"max_new_tokens": 0}, {"no_repeat_ngram_size": -1}):
        with pytest.raises(ModelError):
            GenerationSettings(**bad)


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            resolve_device("cuda")


def test_loss_trains_with_padded_views(single: list[Image.Image], triple: list[Image.Image]) -> None:
    bundle = build("tiny", seed=1)
    reports = ["No acute disease.", "Heart size is normal. Lungs are clear."]
    labels = report_labels(bundle.tokenizer, reports, 16)
    assert labels.shape[0] == 2 and labels[0, 4] == 50256 and (labels[0, 5:] == -100).all()
    pixels, mask = pixel_values(bundle.processor, [single, triple], max_views=4)
    bundle.model.train()
    try:
        value = loss(bundle, pixels, mask, labels)
        value.backward()
    finally:
        bundle.model.eval()
    assert value.ndim == 0 and torch.isfinite(value)
    decoder: Any = bundle.model.decoder
    grad = decoder.transformer.h[0].crossattention.c_attn.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # the images reach the loss


def test_views_preprocessed_one_by_one_stack_to_the_batched_pixels() -> None:
    """The worker preprocesses each image in its decode threads; the result must equal the batch path."""
    from model.imaging.preprocess import pixel_values, stack_views, view_tensor
    from model.network.bundle import build

    bundle = build("tiny")
    studies = [[_xray("CXR7_IM-2263-1001.png"), _xray("CXR7_IM-2263-2001.png")], [_xray("CXR25_IM-1024-2001.png")]]
    batched, mask = pixel_values(bundle.processor, studies, bundle.max_views)
    stacked, stacked_mask = stack_views([[view_tensor(bundle.processor, im) for im in s] for s in studies],
                                        bundle.max_views)
    assert torch.equal(mask, stacked_mask) and torch.equal(batched, stacked)


def test_the_cross_mask_never_reads_the_mask_on_the_host(bundle: Bundle) -> None:
    """Built on the meta device, where any `.all()`/`.item()`/`bool()` raises: no step can wait on the GPU."""
    view_mask = torch.tensor([[True, False], [True, True]], device="meta")  # (B, V)
    hidden = torch.zeros(2, 2 * 197, 64, device="meta")  # (B, V*T, C)
    cross = bundle.model.cross_attention_mask(view_mask, hidden)
    assert cross is not None and cross.shape == (2, 1, 1, 2 * 197) and cross.dtype == torch.bool
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(view_mask.all())  # what the old per-step check did: the test above can fail
    assert bundle.model.cross_attention_mask(None, hidden) is None


def test_cross_mask_is_the_view_mask_per_token(bundle: Bundle) -> None:
    view_mask = torch.tensor([[True, False, False], [True, True, False]])
    cross = bundle.model.cross_attention_mask(view_mask, torch.zeros(2, 3 * 4, 64))
    assert cross is not None
    expected = view_mask.repeat_interleave(4, dim=1)  # (B, V*T), T = 4
    assert torch.equal(cross[:, 0, 0], expected)


def test_device_view_mask_drops_an_all_real_mask() -> None:
    from model.inference.generate import device_view_mask

    cpu = torch.device("cpu")
    assert device_view_mask(torch.ones(3, 2, dtype=torch.bool), cpu) is None
    padded = torch.tensor([[True, False], [True, True]])
    out = device_view_mask(padded, cpu)
    assert out is not None and torch.equal(out, padded)


def test_reports_are_clean_text_whatever_bytes_the_decoder_emits() -> None:
    """A byte-level decoder can stop inside a UTF-8 character or emit a control byte: the demo model's
    reports held U+FFFD and control characters. Decoded whole, then cleaned at the tokenizer boundary."""
    from model.inference.generate import decode_reports
    from model.network.bundle import build

    tok = build("tiny", seed=0).tokenizer
    pieces = ["The", "Ġlungs", "Ã", "Ġare", "ć", "Ġclear", "Ġ", "âĢ"]  # "Ã": byte C3 alone; "ć": byte 07 (bell)
    ids = tok.convert_tokens_to_ids(pieces)
    assert tok.unk_token_id not in ids
    raw = tok.decode(ids)
    assert "\ufffd" in raw and "\x07" in raw  # what used to be stored
    (report,) = decode_reports(tok, torch.tensor([ids]))
    assert report == "The lungs are clear"
    (whole,) = decode_reports(tok, torch.tensor([tok.convert_tokens_to_ids(["Ġcaf", "Ã©"])]))
    assert whole == "café"  # a character split over two byte tokens survives: sequences decode whole
