"""The serving engine on a CPU with a tiny seeded model and real X-rays: same tokens as the trainer's path.

No GPU here: the CUDA-only parts (bf16 cast, pinned copies, CUDA graphs) run on a GPU host through
bench/generate.py; the CUDA branch of `auto_batch_size` is tested with the memory query mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from PIL import Image

from model.imaging.preprocess import pixel_values
from model.inference import engine as engine_module
from model.inference.engine import Engine, EngineOptions, study_bytes
from model.inference.generate import GenerationSettings, decode_reports, generate_from_pixels, generate_ids
from model.network.bundle import Bundle, build
from model.network.multiview import XrqEncoderDecoder
from tests.conftest import EXAMPLES, REPO

GREEDY = GenerationSettings(max_new_tokens=24)
BEAMS = GenerationSettings(num_beams=3, max_new_tokens=24, length_penalty=0.7)
NGRAMS = GenerationSettings(num_beams=2, max_new_tokens=24, no_repeat_ngram_size=2)


def _xray(name: str) -> Image.Image:
    return Image.open(EXAMPLES / name).convert("L")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return build("tiny", seed=0)


@pytest.fixture(scope="module")
def studies() -> list[list[Image.Image]]:
    """Four studies of 1, 3, 2 and 1 views: a batch with padded views in it."""
    return [[_xray("CXR25_IM-1024-2001.png")],
            [_xray("1000_IM-0003-1001.dcm.png"), _xray("1000_IM-0003-2001.dcm.png"),
             _xray("1000_IM-0003-3001.dcm.png")],
            [_xray("CXR7_IM-2263-1001.png"), _xray("CXR7_IM-2263-2001.png")],
            [_xray("CXR303_IM-1404-1001.png")]]


def _batches(bundle: Bundle, studies: list[list[Image.Image]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"mixed views": pixel_values(bundle.processor, studies, bundle.max_views),
            "one view each": pixel_values(bundle.processor, [s[:1] for s in studies], bundle.max_views),
            "all views real": pixel_values(bundle.processor, [studies[1], studies[2][:1] * 3], bundle.max_views)}


def _hf_driven(bundle: Bundle, pixels: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings) -> list[str]:
    """The model driven by generate alone, the view mask turned into the cross mask at every step."""
    started = torch.ones(len(pixels), 1, dtype=torch.long)
    with torch.inference_mode():
        ids = bundle.model.generate(pixel_values=pixels, attention_mask=mask, decoder_attention_mask=started,
                                    **settings.generate_kwargs())
    return decode_reports(bundle.tokenizer, ids)


@pytest.mark.parametrize("settings", [GREEDY, BEAMS, NGRAMS], ids=["greedy", "beams", "no-repeat"])
def test_engine_writes_the_tokens_of_generate_from_pixels(
    bundle: Bundle, studies: list[list[Image.Image]], settings: GenerationSettings
) -> None:
    engine = Engine(bundle)
    for name, (pixels, mask) in _batches(bundle, studies).items():
        reports = engine.generate(pixels, mask, settings)
        assert reports == generate_from_pixels(bundle, pixels, mask, settings), name
        assert reports == _hf_driven(bundle, pixels, mask, settings), name
    pixels, mask = _batches(bundle, studies)["mixed views"]
    together = engine.generate(pixels, mask, settings)
    alone = [engine.generate(*pixel_values(bundle.processor, [s], bundle.max_views), settings)[0] for s in studies]
    assert together == alone and len(set(together)) == len(studies)


def test_engine_on_a_cpu_keeps_fp32_and_the_fingerprint(bundle: Bundle) -> None:
    fingerprint = bundle.fingerprint
    engine = Engine(bundle)
    assert engine.device == torch.device("cpu") and engine.dtype == torch.float32
    assert not bundle.model.training and engine.fingerprint == fingerprint == bundle.fingerprint
    assert engine.generate(torch.zeros(0, 0, 3, 0, 0), torch.zeros(0, 0, dtype=torch.bool), GREEDY) == []


@pytest.mark.parametrize("settings", [GREEDY, BEAMS], ids=["greedy", "beams"])
def test_static_cache_writes_the_dynamic_cache_tokens(
    bundle: Bundle, studies: list[list[Image.Image]], settings: GenerationSettings
) -> None:
    """transformers' static KV cache (what compiling needs) on this encoder-decoder: same tokens."""
    pixels, mask = _batches(bundle, studies)["mixed views"]
    with torch.inference_mode():
        dynamic = generate_ids(bundle.model, pixels, mask, settings)
        static = generate_ids(bundle.model, pixels, mask, settings, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_the_cross_mask_is_built_once_per_batch(
    bundle: Bundle, studies: list[list[Image.Image]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """generate carries the batch's mask to every step (expanded per beam); no step rebuilds it."""
    built: list[tuple[int, ...]] = []
    original = XrqEncoderDecoder.cross_attention_mask

    def counted(self: XrqEncoderDecoder, view_mask: Any, hidden: torch.Tensor) -> Any:
        out = original(self, view_mask, hidden)
        built.append(tuple(out.shape) if out is not None else ())
        return out

    monkeypatch.setattr(XrqEncoderDecoder, "cross_attention_mask", counted)
    pixels, mask = _batches(bundle, studies)["mixed views"]
    Engine(bundle).generate(pixels, mask, BEAMS)
    tokens = mask.shape[1] * 197  # 14 x 14 patches + CLS per view
    assert built == [(len(studies), 1, 1, tokens)]


def test_auto_batch_size_on_a_cpu_fits_the_hosts_memory_up_to_64(bundle: Bundle,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU gains from batches up to 64 studies (it was 8: 0.52x transformers' batched generate at 64);
    it plans for a quarter of the host's available memory, so a small host gets smaller batches."""
    available = {"bytes": 64 * 2**30}
    monkeypatch.setattr(engine_module, "available_memory", lambda: available["bytes"])
    engine = Engine(bundle)
    assert engine.auto_batch_size(GREEDY, views=2) == engine_module.CPU_BATCH_SIZE == 64
    assert Engine(bundle, EngineOptions(max_batch_size=3)).auto_batch_size(GREEDY, views=2) == 3
    per_study = study_bytes(bundle.model.config, GREEDY, 2, engine.dtype.itemsize)
    available["bytes"] = 10 * per_study * 4  # room for ten studies in the quarter planned for
    assert engine.auto_batch_size(GREEDY, views=2) == 10
    assert engine.auto_batch_size(GREEDY, views=4) < 10  # more views, fewer studies
    available["bytes"] = 0
    assert engine.auto_batch_size(GREEDY, views=2) == 1


def test_the_hosts_available_memory_is_read() -> None:
    assert 0 < engine_module.available_memory() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_auto_batch_size_on_cuda_fits_the_free_memory(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch, with the one thing a CPU cannot have mocked: the GPU's memory query."""
    engine = Engine(bundle, EngineOptions(max_batch_size=1024))
    free = {"bytes": 2 * 2**30}
    asked: list[torch.device] = []

    def mem_get_info(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return free["bytes"], 141 * 2**30

    monkeypatch.setattr(Engine, "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    config = bundle.model.config
    per_study = study_bytes(config, GREEDY, 2, engine.dtype.itemsize)
    assert engine.auto_batch_size(GREEDY, views=2) == int(free["bytes"] * engine_module.MEMORY_FRACTION) // per_study
    assert asked == [torch.device("cuda", 0)]  # measured at the call, on the engine's device
    assert engine.auto_batch_size(BEAMS, views=2) < engine.auto_batch_size(GREEDY, views=2)
    assert engine.auto_batch_size(GREEDY, views=4) < engine.auto_batch_size(GREEDY, views=1)
    assert 100 < engine.auto_batch_size(GREEDY, views=2) < 1024
    free["bytes"] = 10 * 2**20  # nearly full: still one study
    assert engine.auto_batch_size(GREEDY, views=2) == 1
    free["bytes"] = 400 * 2**30
    assert engine.auto_batch_size(GREEDY, views=2) == 1024  # capped


def test_study_bytes_is_plausible_for_the_base_model() -> None:
    """ViT-B/16 + GPT-2 small, one view, 60 greedy tokens in bf16: about 14 MB of big tensors per study."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig

    from model.defaults import PRESETS

    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(**PRESETS["base"]["encoder"]), GPT2Config(**PRESETS["base"]["decoder"]))
    one = study_bytes(config, GenerationSettings(max_new_tokens=60), 1, 2)
    assert 10e6 < one < 40e6
    assert study_bytes(config, GenerationSettings(num_beams=4, max_new_tokens=60), 1, 2) > 3 * one
    assert study_bytes(config, GenerationSettings(max_new_tokens=60), 1, 4) > 1.5 * one


def test_the_engine_needs_neither_worker_nor_db() -> None:
    code = ("import sys, model.inference.engine; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'worker', 'db', 'cli', 'sqlalchemy', 'celery', 'pydicom', 'click'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_compiled_engine_writes_the_eager_tokens(bundle: Bundle, studies: list[list[Image.Image]]) -> None:
    """torch.compile of the decoding step with a static cache (inductor on a CPU; ~30 s to compile)."""
    pixels, mask = _batches(bundle, studies)["mixed views"]
    eager = Engine(bundle)
    compiled = Engine(bundle, EngineOptions(compile=True))
    for settings in (GREEDY, BEAMS):  # beams fall back to the eager dynamic cache
        assert compiled.generate(pixels, mask, settings) == eager.generate(pixels, mask, settings)
    assert hasattr(bundle.model, "_compiled_call")  # the greedy run did go through the compiled step
