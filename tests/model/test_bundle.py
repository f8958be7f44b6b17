"""Build, save and load real tiny models; the load errors a user can run into."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from model.errors import ModelError, ModelFormatError, ModelNotFoundError
from model.inference.generate import GenerationSettings, generate
from model.network.bundle import Bundle, build, resolve_device
from model.network.store import load, save
from testing.parts import tiny_parts as _parts
from tests.conftest import EXAMPLES, REPO


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


def test_every_preset_builds_and_the_cli_offers_each(studies: list[list[Image.Image]]) -> None:
    small = build("small", seed=0)
    encoder, decoder = small.model.config.encoder, small.model.config.decoder
    assert (encoder.patch_size, encoder.hidden_size, decoder.n_embd) == (32, 128, 128)
    assert encoder.initializer_range == decoder.initializer_range == 0.02
    assert len(generate(small, studies[:2], GenerationSettings(max_new_tokens=3))) == 2
    # Its positions start as 2-D sin-cos: patches of one row share the row half, of one column the column half.
    table = small.model.encoder.embeddings.position_embeddings[0].detach()  # (1 + 7*7, 128)
    grid, half = table[1:].reshape(7, 7, 128), 64
    assert torch.equal(table[0], torch.zeros(128))
    assert torch.equal(grid[2, 0, :half], grid[2, 6, :half]) and not torch.equal(grid[2, 0, :half], grid[3, 0, :half])
    assert torch.equal(grid[0, 4, half:], grid[6, 4, half:]) and not torch.equal(grid[0, 4, half:], grid[0, 5, half:])
    assert torch.allclose(grid[0, 0], torch.tensor([0.0, 1.0]).repeat_interleave(32).repeat(2))  # sin 0, cos 0
    tiny = build("tiny", seed=0).model.encoder.embeddings.position_embeddings[0, 1:]
    assert tiny.std() > 0.2  # the tiny preset keeps its wide random init (tests want image-dependent words)


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
    assert loaded.meta.to_dict() == meta and loaded.model.config.max_views == 3
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
    assert bundle.meta.sources["encoder"] == str(tmp_path / "vit")
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


# --- identity: the fingerprint covers what decides a report -------------------------------------------


def _copy(model: Path, to: Path) -> Path:
    shutil.copytree(model, to)
    return to


def test_fingerprint_covers_tokenizer_preprocessing_and_views(tmp_path: Path, tiny_model: Path) -> None:
    original = load(tiny_model, device="cpu").fingerprint
    assert load(_copy(tiny_model, tmp_path / "same"), device="cpu").fingerprint == original  # a copy is the same

    other_tok = _copy(tiny_model, tmp_path / "tok")  # same weights, two vocabulary entries swapped
    spec = json.loads((other_tok / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["Hello"], vocab["world"] = vocab["world"], vocab["Hello"]
    (other_tok / "tokenizer.json").write_text(json.dumps(spec))
    assert load(other_tok, device="cpu").fingerprint != original

    other_mean = _copy(tiny_model, tmp_path / "mean")
    proc = json.loads((other_mean / "preprocessor_config.json").read_text())
    proc["image_mean"] = [0.4, 0.4, 0.4]
    (other_mean / "preprocessor_config.json").write_text(json.dumps(proc))
    assert load(other_mean, device="cpu").fingerprint != original

    fewer_views = _copy(tiny_model, tmp_path / "views")  # the config says how many views
    config = json.loads((fewer_views / "config.json").read_text())
    config["max_views"] = 1
    (fewer_views / "config.json").write_text(json.dumps(config))
    assert load(fewer_views, device="cpu").max_views == 1
    assert load(fewer_views, device="cpu").fingerprint != original

    older = _copy(tiny_model, tmp_path / "older")  # saved before the config carried it: xrq.json says
    del config["max_views"]
    (older / "config.json").write_text(json.dumps(config))
    assert load(older, device="cpu").fingerprint == original
    meta = json.loads((older / "xrq.json").read_text())
    meta["max_views"] = 1
    (older / "xrq.json").write_text(json.dumps(meta))
    assert load(older, device="cpu").max_views == 1
    assert load(older, device="cpu").fingerprint != original


def test_fingerprint_ignores_runtime_state() -> None:
    bundle = build("tiny")
    before = bundle.fingerprint
    bundle.tokenizer(["short", "a longer text"], padding=True, truncation=True, max_length=4)  # backend state
    bundle.model.config.auto_map = {"AutoModelForImageTextToText": "multiview.XrqEncoderDecoder"}
    assert bundle.fingerprint == before
    bundle.processor.image_std = [0.25, 0.25, 0.25]
    assert bundle.fingerprint != before


def test_shipped_demo_records_its_fingerprint() -> None:
    demo = load(REPO / "models" / "demo", device="cpu")
    assert demo.meta.fingerprint == demo.fingerprint


# --- pretrained parts: sizes and tokenizer come from the parts ------------------------------------------


def test_build_uses_the_decoders_own_tokenizer(tmp_path: Path) -> None:
    encoder, decoder = _parts(tmp_path, with_tokenizer=True)
    bundle = build(encoder=encoder, decoder=decoder)
    assert len(bundle.tokenizer) == bundle.model.config.decoder.vocab_size < 1000
    assert bundle.meta.sources["tokenizer"] == decoder
    assert bundle.meta.preset is None  # the sizes came from the parts, not from a preset
    assert bundle.tokenizer.decode(bundle.tokenizer("Heart size normal.")["input_ids"]) == "Heart size normal."


def test_build_without_a_decoder_tokenizer_uses_gpt2s(tmp_path: Path) -> None:
    encoder, decoder = _parts(tmp_path, with_tokenizer=False)
    bundle = build(encoder=encoder, decoder=decoder)
    assert len(bundle.tokenizer) == 50257 and bundle.meta.sources["tokenizer"] is None
    assert build(encoder=encoder).meta.preset == "tiny"  # the decoder still comes from the preset


# --- damaged model directories: each one error that says what to do ---------------------------------------

DAMAGE = {
    "doubled sizes": lambda d: _edit_config(d, lambda c: c["encoder"].update(hidden_size=128)),
    "doubled layers": lambda d: _edit_config(d, lambda c: c["decoder"].update(n_layer=4)),
    "config not json": lambda d: (d / "config.json").write_text("{not json"),
    "config a list": lambda d: (d / "config.json").write_text("[]"),
    "xrq.json not json": lambda d: (d / "xrq.json").write_text("{oops"),
    "weights cut to 1 MB": lambda d: _cut(d / "model.safetensors", 1_000_000),
    "weights cut to 5 bytes": lambda d: _cut(d / "model.safetensors", 5),
}
EXPECTED = {
    "doubled sizes": r"config\.json does not describe the weights .* tensors of other sizes .* restore the config",
    "doubled layers": r"config\.json does not describe the weights .* missing from the weights",
    "config not json": r"config\.json is not valid JSON .* Copy the model directory again",
    "config a list": r"config\.json holds a JSON list, not an object",
    "xrq.json not json": r"xrq\.json is not valid JSON",
    "weights cut to 1 MB": r"model\.safetensors is damaged or cut short: it is 1,000,000 bytes long",
    "weights cut to 5 bytes": r"model\.safetensors is damaged or cut short: it is 5 bytes long",
}


def _edit_config(folder: Path, change: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _cut(file: Path, size: int) -> None:
    file.write_bytes(file.read_bytes()[:size])


def damaged(tiny_model: Path, where: Path, kind: str) -> Path:
    """A copy of the tiny model damaged as `kind` says (shared with the CLI tests)."""
    folder = _copy(tiny_model, where)
    DAMAGE[kind](folder)
    return folder


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_model_is_refused_with_what_to_do(tmp_path: Path, tiny_model: Path, kind: str) -> None:
    with pytest.raises(ModelFormatError, match=EXPECTED[kind]):
        load(damaged(tiny_model, tmp_path / "m", kind), device="cpu")


def test_mistyped_local_path_is_not_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"^No such directory: models/dmeo\. Did you mean models/demo\?"):
        load("models/dmeo")
    with pytest.raises(ModelNotFoundError, match="neither a directory nor a reachable hub model"):
        load("hf-hub:models/dmeo")  # plainly the hub
    with pytest.raises(ModelNotFoundError, match="neither a directory nor a reachable hub model"):
        load("someone/some-model")  # no such local folder: a hub id


@pytest.mark.parametrize(("device", "message"), [
    ("garbage", "'garbage' is not a device; use auto, cpu, cuda or cuda:N"),
    ("meta", "Device 'meta' cannot run a model"),
    ("cuda:99", "cuda:99"),
])
def test_unusable_devices_are_refused(device: str, message: str) -> None:
    with pytest.raises(ModelError, match=re.escape(message)):
        resolve_device(device)
