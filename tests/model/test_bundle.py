"""Build, save and load real tiny models; the load errors a user can run into."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from model.bundle import Bundle, build, load, save
from model.errors import ModelError, ModelFormatError, ModelNotFoundError
from model.generate import GenerationSettings, generate
from tests.conftest import EXAMPLES


@pytest.fixture(scope="module")
def studies() -> list[list[Image.Image]]:
    """Real IU X-rays: a 2-view, a 1-view and a 2-view study."""
    def xray(name: str) -> Image.Image:
        return Image.open(EXAMPLES / name).convert("L")

    return [[xray("CXR54_IM-2145-1001.png"), xray("CXR54_IM-2145-1002.png")],
            [xray("CXR25_IM-1024-2001.png")],
            [xray("CXR7_IM-2263-1001.png"), xray("CXR7_IM-2263-2001.png")]]


def _same_weights(a: Bundle, b: Bundle) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_is_seeded() -> None:
    before = torch.random.get_rng_state()
    a, b, c = build("tiny", seed=0), build("tiny", seed=0), build("tiny", seed=1)
    assert _same_weights(a, b) and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    assert len(a.fingerprint) == 64 and a.name == "tiny"


def test_default_tokenizer_and_token_ids() -> None:
    bundle = build("tiny")
    tok = bundle.tokenizer
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 50256
    gen = bundle.model.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (50256, 50256, 50256)
    assert bundle.model.config.decoder.vocab_size == len(tok) == 50257
    assert not bundle.model.training


def test_unknown_preset_and_bad_max_views() -> None:
    with pytest.raises(ModelError, match="Unknown preset"):
        build("huge")
    with pytest.raises(ModelError, match="max_views"):
        build("tiny", max_views=0)


def test_save_load_round_trip(tmp_path: Path, studies: list[list[Image.Image]]) -> None:
    bundle = build("tiny", seed=3, max_views=3)
    out = save(bundle, tmp_path / "xrq-tiny")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "preprocessor_config.json", "xrq.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)

    loaded = load(out, device="cpu")
    assert _same_weights(bundle, loaded) and loaded.fingerprint == bundle.fingerprint
    assert type(loaded.model).__name__ == "XrqEncoderDecoder" and not loaded.model.training
    assert loaded.name == "xrq-tiny" and loaded.path == out and loaded.max_views == 3
    meta = json.loads((out / "xrq.json").read_text())
    assert meta["fingerprint"] == bundle.fingerprint and meta["preset"] == "tiny" and meta["seed"] == 3
    assert loaded.meta == meta
    text = "Heart size normal. No pleural effusion, <|endoftext|>"
    assert loaded.tokenizer(text)["input_ids"] == bundle.tokenizer(text)["input_ids"]
    assert loaded.tokenizer.pad_token_id == 50256
    assert loaded.processor.size == bundle.processor.size == {"height": 224, "width": 224}
    settings = GenerationSettings(max_new_tokens=12)
    assert generate(loaded, studies, settings) == generate(bundle, studies, settings)


def test_save_refuses_non_empty_directory(tmp_path: Path) -> None:
    bundle = build("tiny")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        save(bundle, tmp_path)
    save(bundle, tmp_path, overwrite=True)
    assert load(tmp_path).fingerprint == bundle.fingerprint


def test_fingerprint_follows_weight_changes() -> None:
    bundle = build("tiny")
    before = bundle.fingerprint
    with torch.no_grad():
        bundle.model.decoder.lm_head.weight[0, 0] += 1.0  # in place, as an optimizer step would
    assert bundle.fingerprint != before


def test_build_from_pretrained_parts(tmp_path: Path, studies: list[list[Image.Image]]) -> None:
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=32))
    gpt = GPT2LMHeadModel(GPT2Config(n_embd=48, n_layer=1, n_head=2, n_positions=64, vocab_size=50257))
    assert not gpt.config.add_cross_attention
    vit.save_pretrained(tmp_path / "vit")
    gpt.save_pretrained(tmp_path / "gpt2")

    bundle = build(encoder=str(tmp_path / "vit"), decoder=str(tmp_path / "gpt2"), seed=0)
    model = bundle.model
    assert model.config.decoder.add_cross_attention and model.config.decoder.is_decoder
    assert hasattr(model.decoder.transformer.h[0], "crossattention")
    assert hasattr(model, "enc_to_dec_proj")  # 32 → 48
    assert torch.equal(model.encoder.embeddings.patch_embeddings.projection.weight,
                       vit.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(model.decoder.transformer.wte.weight, gpt.transformer.wte.weight)
    assert bundle.meta["sources"]["encoder"] == str(tmp_path / "vit")
    again = build(encoder=str(tmp_path / "vit"), decoder=str(tmp_path / "gpt2"), seed=0)
    assert again.fingerprint == bundle.fingerprint  # the new cross-attention is seeded too
    reports = generate(bundle, studies, GenerationSettings(max_new_tokens=5))
    assert len(reports) == 3 and all(isinstance(r, str) for r in reports)


def test_missing_pretrained_part_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="pretrained encoder"):
        build(encoder=str(tmp_path / "nope"))


def test_load_missing_directory(tmp_path: Path) -> None:
    for missing in (tmp_path / "nope", str(tmp_path / "nope"), "./models/nope"):
        with pytest.raises(ModelNotFoundError, match="xrq model init"):
            load(missing)


def test_load_file_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="is a file"):
        load(tmp_path / "model.safetensors")


def test_load_directory_without_weights(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(ModelFormatError, match=r"missing: model\.safetensors") as err:
        load(tmp_path)
    assert "tokenizer.json" in str(err.value) and "preprocessor_config.json" in str(err.value)
    with pytest.raises(ModelFormatError, match=r"config\.json"):
        load(tmp_path.parent)  # an unrelated directory names config.json as missing too


class _Payload:
    """Unpickling this touches a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_never_unpickled(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "legacy"
    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "pwned"
    torch.save({"weight": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelFormatError, match=r"pickled weights \(pytorch_model\.bin\)"):
        load(folder)
    assert not marker.exists()


def test_unknown_hub_id_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="xrq model init"):
        load("xrq-test/no-such-model")
    assert time.monotonic() - start < 5
