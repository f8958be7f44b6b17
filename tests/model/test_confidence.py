"""Every draft's token log-probabilities are those plain transformers computes for the same generation.

The reference is transformers alone: `generate(..., output_scores=True, return_dict_in_generate=True)`
then `compute_transition_scores` (normalized for greedy search; beam scores are log-probabilities
already), on the same tiny seeded weights and real X-rays, single-view and multi-view studies.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from PIL import Image

from model.imaging.preprocess import pixel_values
from model.inference.confidence import Draft, confidence, draft, drafts_from_pixels
from model.inference.engine import Engine, EngineOptions
from model.inference.generate import GenerationSettings, generate_from_pixels
from model.network.bundle import Bundle, build
from tests.conftest import EXAMPLES

GREEDY = GenerationSettings(max_new_tokens=20)
BEAMS = GenerationSettings(num_beams=3, max_new_tokens=20, length_penalty=0.7)
NGRAMS = GenerationSettings(num_beams=2, max_new_tokens=20, no_repeat_ngram_size=2)
GREEDY_NGRAMS = GenerationSettings(max_new_tokens=20, no_repeat_ngram_size=2)
SETTINGS = [GREEDY, BEAMS, NGRAMS, GREEDY_NGRAMS]
IDS = ["greedy", "beams", "beams-no-repeat", "greedy-no-repeat"]


def _xray(name: str) -> Image.Image:
    return Image.open(EXAMPLES / name).convert("L")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build("tiny", seed=0)


@pytest.fixture(scope="module")
def stopping(bundle: Bundle) -> Bundle:
    """The tiny model made to end reports: the end-of-text token's output row a little above a token the
    model often writes, so reports stop where that token would have come (at different lengths)."""
    model = copy.deepcopy(bundle.model)
    eos = bundle.tokenizer.eos_token_id
    with torch.no_grad():
        pixels, mask = pixel_values(bundle.processor, [[_xray("CXR25_IM-1024-2001.png")]], bundle.max_views)
        ids = model.generate(pixel_values=pixels, attention_mask=mask, max_new_tokens=20)[0, 1:]
        common = int(ids.bincount().argmax())
        head = model.decoder.get_output_embeddings().weight
        head[eos] = head[common] * 1.05
    return Bundle(model, bundle.processor, bundle.tokenizer, dataclasses.replace(bundle.meta))


STUDIES = {
    "single view": [[_xray("CXR25_IM-1024-2001.png")], [_xray("CXR303_IM-1404-1001.png")]],
    "multi view": [[_xray("1000_IM-0003-1001.dcm.png"), _xray("1000_IM-0003-2001.dcm.png"),
                    _xray("1000_IM-0003-3001.dcm.png")],
                   [_xray("CXR7_IM-2263-1001.png"), _xray("CXR7_IM-2263-2001.png")],
                   [_xray("CXR25_IM-1024-2001.png")]],
}


def _reference(bundle: Bundle, pixels: torch.Tensor, mask: torch.Tensor,
               settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) sequences and (N, L-1) transition scores from transformers' generate alone."""
    model = bundle.model
    with torch.inference_mode():
        out = model.generate(pixel_values=pixels, attention_mask=mask, output_scores=True,
                             return_dict_in_generate=True, **settings.generate_kwargs())
        scores = model.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                                 normalize_logits=settings.num_beams == 1)
    return out.sequences, scores


def _assert_same(drafts: list[Draft], sequences: torch.Tensor, scores: torch.Tensor) -> None:
    assert len(drafts) == len(sequences)
    for d, row, ref in zip(drafts, sequences, scores, strict=True):
        n = len(d.token_ids)
        assert list(d.token_ids) == row[1:1 + n].tolist()
        assert torch.allclose(torch.tensor(d.token_logprobs), ref[:n].float(), atol=5e-4, rtol=0)  # fp32 rounding
        assert all(lp <= 0 for lp in d.token_logprobs)
        assert d.confidence == pytest.approx(math.exp(ref[:n].mean().item()), rel=1e-4)


@pytest.mark.parametrize("settings", SETTINGS, ids=IDS)
@pytest.mark.parametrize("kind", list(STUDIES))
def test_logprobs_equal_transformers_transition_scores(
    bundle: Bundle, stopping: Bundle, settings: GenerationSettings, kind: str
) -> None:
    for model in (bundle, stopping):
        pixels, mask = pixel_values(model.processor, STUDIES[kind], model.max_views)
        sequences, scores = _reference(model, pixels, mask, settings)
        drafts = drafts_from_pixels(model, pixels, mask, settings)
        _assert_same(drafts, sequences, scores)
        assert [d.text for d in drafts] == generate_from_pixels(model, pixels, mask, settings)
        assert drafts == Engine(model).drafts(pixels, mask, settings)


@pytest.mark.parametrize("settings", [GREEDY, BEAMS], ids=["greedy", "beams"])
def test_the_end_of_text_token_counts_when_generated(stopping: Bundle, settings: GenerationSettings) -> None:
    studies = STUDIES["multi view"] + STUDIES["single view"]
    drafts = draft(stopping, studies, settings)
    eos = stopping.tokenizer.eos_token_id
    ended = [d for d in drafts if d.token_ids and d.token_ids[-1] == eos]
    assert ended, "the stopping model ends some reports"
    assert all(len(d.token_logprobs) == len(d.token_ids) for d in drafts)
    assert all(eos not in d.token_ids[:-1] for d in drafts)
    if settings.num_beams == 1:  # (beams prefer the short hypotheses of this model)
        assert len({len(d.token_ids) for d in drafts}) > 1, "reports of different lengths in one batch"


def test_compiled_engine_records_the_same_logprobs(bundle: Bundle) -> None:
    pixels, mask = pixel_values(bundle.processor, STUDIES["single view"], bundle.max_views)
    settings = GenerationSettings(max_new_tokens=8)
    eager = Engine(bundle).drafts(pixels, mask, settings)
    compiled = Engine(bundle, EngineOptions(compile=True)).drafts(pixels, mask, settings)
    assert [d.token_ids for d in compiled] == [d.token_ids for d in eager]
    for c, e in zip(compiled, eager, strict=True):
        assert c.token_logprobs == pytest.approx(e.token_logprobs, abs=1e-4)


def test_confidence_is_the_geometric_mean_probability() -> None:
    assert confidence([]) is None
    assert confidence([0.0, 0.0]) == 1.0
    assert confidence([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)
    sure = Draft("a", (1, 2), (math.log(0.9), math.log(0.8)))
    unsure = Draft("b", (1, 2), (math.log(0.9), math.log(0.1)))
    assert unsure.confidence is not None and sure.confidence is not None
    assert unsure.confidence < sure.confidence
    assert sure.record() == {"confidence": sure.confidence, "token_logprobs": [math.log(0.9), math.log(0.8)],
                             "token_ids": [1, 2], "findings": None, "impression": None}
