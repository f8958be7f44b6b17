"""Where the model looked: cross-attention maps from one teacher-forced pass over a report's stored tokens."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.errors import ModelError
from model.figures.attention import render_attention
from model.imaging.preprocess import pixel_values
from model.inference.attention import (
    _encoder_relevance,
    attention_maps,
    marked_words,
    occlusion,
    sentence_spans,
)
from model.inference.confidence import draft
from model.network.bundle import Bundle, build
from tests.conftest import EXAMPLES, REPO


def _xray(name: str) -> Image.Image:
    return Image.open(EXAMPLES / name).convert("L")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build("tiny", seed=0)


@pytest.fixture(scope="module")
def views() -> list[Image.Image]:
    return [_xray("CXR7_IM-2263-1001.png"), _xray("CXR7_IM-2263-2001.png")]


def _report_ids(bundle: Bundle, text: str) -> list[int]:
    return [*bundle.tokenizer(text, add_special_tokens=False)["input_ids"], bundle.tokenizer.eos_token_id]


def test_each_sentence_has_a_map_per_view_that_sums_to_one(bundle: Bundle, views: list[Image.Image]) -> None:
    ids = _report_ids(bundle, "the heart is normal in size. there is a small left pleural effusion.")
    attention = attention_maps(bundle, views, ids)
    assert [s.text for s in attention.sentences] == ["the heart is normal in size.",
                                                     "there is a small left pleural effusion."]
    assert attention.views == 2 and attention.grid == (14, 14)  # tiny: 224 px in 16-px patches
    for sentence in attention.sentences:
        assert sentence.maps.shape == (2, 14, 14)
        assert np.allclose(sentence.maps.sum(axis=(1, 2)), 1.0)
        assert (sentence.maps >= 0).all()
        assert math.isclose(sum(sentence.view_share), 1.0) and all(0 < s < 1 for s in sentence.view_share)
    first, second = attention.sentences
    assert (first.start, first.end, second.end) == (0, first.end, len(ids) - 1)  # the end of text: in none
    assert not np.allclose(first.maps, second.maps), "different sentences look at different places"


def test_the_maps_change_with_the_image(bundle: Bundle, views: list[Image.Image]) -> None:
    ids = _report_ids(bundle, "no acute disease.")
    here = attention_maps(bundle, views[:1], ids).sentences[0].maps
    there = attention_maps(bundle, [_xray("CXR25_IM-1024-2001.png")], ids).sentences[0].maps
    flipped = attention_maps(bundle, [views[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)], ids).sentences[0].maps
    again = attention_maps(bundle, views[:1], ids).sentences[0].maps
    assert np.array_equal(here, again)
    assert np.abs(here - there).sum() > 0.05 and np.abs(here - flipped).sum() > 0.05


def test_the_replay_is_the_pass_that_wrote_the_tokens(bundle: Bundle, views: list[Image.Image]) -> None:
    """Teacher-forced on [start, t1 .. tn-1], position i's distribution is the one token i was drawn
    from: its log-probabilities are the stored ones. (The maps are read at the same positions.)"""
    written = draft(bundle, [views])[0]
    pixels, _mask = pixel_values(bundle.processor, [views], bundle.max_views)
    inputs = torch.tensor([[bundle.model.config.decoder_start_token_id, *written.token_ids[:-1]]])
    with torch.inference_mode():
        logits = bundle.model(pixel_values=pixels, view_mask=None, decoder_input_ids=inputs).logits[0]
    replayed = logits.log_softmax(-1).gather(1, torch.tensor(written.token_ids)[:, None])[:, 0]
    assert torch.allclose(replayed, torch.tensor(written.token_logprobs), atol=1e-3)
    attention = attention_maps(bundle, views, written.token_ids)
    assert all(np.allclose(s.maps.sum(axis=(1, 2)), 1.0) for s in attention.sentences)
    # Generation keeps its fast attention after the replay.
    assert bundle.model.config.decoder._attn_implementation == "sdpa"


def test_sentences_and_unsure_words(bundle: Bundle) -> None:
    ids = _report_ids(bundle, "FINDINGS: lungs are clear. IMPRESSION: normal")
    assert [text for text, _, _ in sentence_spans(bundle.tokenizer, ids)] == [
        "FINDINGS:", "lungs are clear.", "IMPRESSION:", "normal"]
    words = bundle.tokenizer("the heart is enlarged .", add_special_tokens=False)["input_ids"]
    logprobs = [math.log(0.9)] * len(words)
    logprobs[3] = math.log(0.2)  # " enlarged"
    text, unsure = marked_words(bundle.tokenizer, [*words, bundle.tokenizer.eos_token_id],
                                [*logprobs, math.log(0.01)], 0.5)
    assert (text, unsure) == ("the heart is [enlarged] .", 1)
    assert marked_words(bundle.tokenizer, words, logprobs, 0.1) == ("the heart is enlarged .", 0)


def test_a_character_split_over_byte_tokens_is_marked_whole() -> None:
    """The demo tokenizer writes "é" and "’" as two and three byte-level tokens: each token alone decodes
    to U+FFFD, so a marked word is decoded from all its tokens at once (it showed "[caf��]")."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "demo", trust_remote_code=False)
    ids = tokenizer(" café ’ ok", add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(tokenizer.decode([i]) for i in ids)  # split, as the test needs
    assert marked_words(tokenizer, ids, [math.log(0.2)] * len(ids), 0.5) == ("[café] [’] [ok]", 3)


def test_the_picture_renders_to_a_file_object(bundle: Bundle, views: list[Image.Image]) -> None:
    ids = _report_ids(bundle, "the heart is normal. the lungs are clear.")
    buffer = io.BytesIO()
    render_attention(buffer, views, attention_maps(bundle, views, ids), title="study 7", report="the heart …")
    picture = Image.open(io.BytesIO(buffer.getvalue()))
    assert picture.format == "PNG" and picture.height > picture.width * 0.8  # two rows (sentences), two columns


def test_relevance_maps_are_maps_and_leave_the_fast_kernels(bundle: Bundle, views: list[Image.Image]) -> None:
    """`method="relevance"`: one backward pass a sentence, through eager attention in the encoder and
    the decoder (whose layers hold their own configs), switched back after."""
    ids = _report_ids(bundle, "the heart is normal in size. there is a small left pleural effusion.")
    raw = attention_maps(bundle, views, ids)
    relevance = attention_maps(bundle, views, ids, method="relevance")
    assert [s.text for s in relevance.sentences] == [s.text for s in raw.sentences]
    assert relevance.grid == raw.grid and relevance.averaged != raw.averaged
    for sentence, plain in zip(relevance.sentences, raw.sentences, strict=True):
        assert sentence.maps.shape == (2, 14, 14) and (sentence.maps >= 0).all()
        assert np.allclose(sentence.maps.sum(axis=(1, 2)), 1.0) and math.isclose(sum(sentence.view_share), 1.0)
        assert all(view.std() > 0 for view in sentence.maps)  # a map, not a flat or empty fallback
        assert not np.allclose(sentence.maps, plain.maps)
    again = attention_maps(bundle, views, ids, method="relevance")
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(again.sentences, relevance.sentences, strict=True))
    implementations = {m.config._attn_implementation for m in bundle.model.modules() if hasattr(m, "config")}
    assert implementations == {"sdpa"}
    with pytest.raises(ModelError, match="no attention method 'saliency'"):
        attention_maps(bundle, views, ids, method="saliency")
    with torch.inference_mode():  # as a server's caller may be: the replay asks for its gradients itself
        inside = attention_maps(bundle, views, ids, method="relevance")
    assert all(np.array_equal(a.maps, b.maps) for a, b in zip(inside.sentences, relevance.sentences, strict=True))


def test_the_encoder_relevance_is_the_rollout_of_its_weighted_maps() -> None:
    """Two tokens, two layers by hand: R = (I + A2)(I + A1); its mixing part R - I normalised by row, plus I."""
    a1 = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # token 0 drew on token 1
    a2 = torch.tensor([[[0.0, 0.0], [0.5, 0.0]]])  # token 1 drew on token 0
    r = (torch.eye(2) + a2[0]) @ (torch.eye(2) + a1[0])  # [[1, 1], [0.5, 1.5]]
    mixing = r - torch.eye(2)  # [[0, 1], [0.5, 0.5]]
    expected = mixing / mixing.sum(dim=-1, keepdim=True) + torch.eye(2)
    assert torch.allclose(_encoder_relevance([a1, a2])[0], expected)
    # A layer nothing mixed in leaves the identity: a row of zeros is not divided.
    assert torch.equal(_encoder_relevance([torch.zeros(1, 2, 2)])[0], torch.eye(2))


def test_an_occlusion_map_is_the_fall_of_the_sentence_without_each_window(bundle: Bundle,
                                                                          views: list[Image.Image]) -> None:
    """`method="occlusion"`: the weight of a window of patches of a view is how far the sentence's
    log-probability falls when the window is painted over with the mean grey (0 after normalisation), by
    hand here, shared by its patches. The tiny preset's 14x14 patches go in 2x2 windows (at most 7 a side);
    `window=1` paints single patches."""
    ids = _report_ids(bundle, "the heart is normal in size. there is a small left pleural effusion.")
    occluded = attention_maps(bundle, views, ids, method="occlusion")
    sentence = occluded.sentences[1]
    assert occluded.method == "occlusion" and np.allclose(sentence.maps.sum(axis=(1, 2)), 1.0)
    pixels, _mask = pixel_values(bundle.processor, [views], bundle.max_views)
    inputs = torch.tensor([[bundle.model.config.decoder_start_token_id, *ids[:-1]]])
    size = bundle.model.config.encoder.patch_size

    def logprob(study: torch.Tensor) -> float:
        with torch.inference_mode():
            logits = bundle.model(pixel_values=study, view_mask=None, decoder_input_ids=inputs).logits[0]
        picked = logits.log_softmax(-1).gather(1, torch.tensor(ids)[:, None])[:, 0]
        return float(picked[sentence.start:sentence.end].sum())

    def fall(view: int, row: int, col: int, step: int) -> float:
        study = pixels.clone()
        study[0, view, :, row * size:(row + step) * size, col * size:(col + step) * size] = 0
        return max(0.0, logprob(pixels) - logprob(study))

    weights = sentence.maps * np.array(sentence.view_share)[:, None, None]  # one scale over both views
    windows = weights[:, ::2, ::2]
    assert np.array_equal(windows, weights[:, 1::2, 1::2]) and np.array_equal(windows, weights[:, ::2, 1::2])
    order = np.argsort(windows, axis=None)[::-1]
    top, second = ((v, 2 * r, 2 * c) for v, r, c in (np.unravel_index(int(i), windows.shape) for i in order[:2]))
    assert math.isclose(weights[top] / weights[second], fall(*top, 2) / fall(*second, 2), rel_tol=1e-3)
    # One patch at a time: the same by hand.
    single = occlusion(bundle, pixels, ids, [(sentence.start, sentence.end)], window=1)[0].reshape(2, -1)[:, 1:]
    single = single.reshape(2, 14, 14).double().numpy()
    first, next_ = (np.unravel_index(int(i), single.shape) for i in np.argsort(single, axis=None)[::-1][:2])
    assert math.isclose(single[first] / single[next_], fall(*first, 1) / fall(*next_, 1), rel_tol=1e-3)
    low = np.unravel_index(int(np.argmin(single)), single.shape)
    assert fall(*low, 1) <= fall(*first, 1) * single[low] / single[first] + 1e-4
