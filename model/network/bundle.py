"""The encoder-decoder and everything that travels with it: what a model is, and building one.

A `Bundle` is model + image processor + tokenizer + xrq's own metadata, so preprocessing can never
drift from the weights (the open_clip pattern). A saved bundle is one self-describing directory
(`model.network.store` saves and loads it).

The model is `XrqEncoderDecoder`: transformers' VisionEncoderDecoder (ViT encoder, GPT-2 decoder with
cross-attention) taught about multi-view studies. All views of a batch go through the encoder in one
pass, each study's views are joined into one sequence, and padded views are masked out of
cross-attention with a (B, V*T) encoder attention mask built from a (B, V) `view_mask`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTImageProcessorPil,
)

from model.defaults import DEFAULT_MAX_VIEWS, PRESETS, VIEW_JOINS, view_join_settings
from model.errors import ModelError, ModelFormatError, ModelNotFoundError
from model.network import identity
from model.network.meta import FORMAT_VERSION, BundleMeta
from model.network.multiview import XrqEncoderDecoder, XrqEncoderDecoderConfig

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # where a model can run; "meta" holds no data
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")

@dataclass
class Bundle:
    """A model with the preprocessing, tokenizer and metadata it was trained with."""

    model: XrqEncoderDecoder
    processor: ViTImageProcessorPil
    tokenizer: PreTrainedTokenizerFast
    meta: BundleMeta
    path: Path | None = None
    _digests: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The directory name when saved or loaded, else the hub id or preset it was built from."""
        if self.path is not None:
            return self.path.name
        return str(self.meta.source or self.meta.preset or "unsaved")

    @property
    def max_views(self) -> int:
        """Views per study the model looks at (its config's `max_views`); extra views are dropped by preprocessing."""
        return int(cast(XrqEncoderDecoderConfig, self.model.config).max_views)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 hex of what decides a report: weights, architecture, tokenizer, preprocessing, views
        (see `model.network.identity`). What "the same model" means in the database.

        Identical after save/load or a move between devices. The weights' hash is cached until any
        parameter changes (tensor versions are part of the cache key, so an optimizer step
        invalidates it); the tokenizer's until its size or special tokens change.
        """
        state = self.model.state_dict()
        config = identity.config_for_hash(self.model.config)
        weights_key = (config, tuple((k, t.data_ptr(), t._version, t.dtype) for k, t in state.items()))
        weights = self._digest("weights", weights_key, lambda: identity.weights_digest(state, config))
        tok = self.tokenizer
        tok_key = (id(tok), len(tok), tuple(_token_ids(tok).values()))
        tokenizer = self._digest("tokenizer", tok_key, lambda: identity.tokenizer_digest(tok))
        return identity.combine(weights, tokenizer, identity.processor_digest(self.processor), self.max_views)

    def _digest(self, part: str, key: Any, compute: Any) -> str:
        cached = self._digests.get(part)
        if cached is None or cached[0] != key:
            cached = self._digests[part] = (key, compute())
        return cached[1]


@contextmanager
def without_progress_bars() -> Iterator[None]:
    """transformers' (and the hub's) per-load progress bars off while xrq builds or loads a model, then as
    they were: xrq shows its own progress, and importing xrq changes nothing."""
    was_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers.utils.logging.enable_progress_bar()


@without_progress_bars()
def build(
    preset: str = "tiny",
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    tokenizer: str | Path | None = None,
    seed: int = 0,
    max_views: int = DEFAULT_MAX_VIEWS,
    view_join: str | None = None,
) -> Bundle:
    """Build a fresh bundle: from the preset's configs, or from pretrained parts (hub ids or directories).

    The preset only sizes the parts not given (with both parts given, `meta.preset` is None).
    The tokenizer is `tokenizer`, else the decoder's own when it has one, else GPT-2's vocabulary.
    Random weights (all of them, or the new cross-attention on top of pretrained parts) come from
    `seed`, so the same arguments give identical weights. The global RNG is left untouched.
    `view_join` (one of `VIEW_JOINS`) overrides the preset's multi-view join; None keeps the preset's.
    """
    if preset not in PRESETS:
        raise ModelError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if max_views < 1:
        raise ModelError(f"max_views must be at least 1, got {max_views}.")
    join_name = view_join if view_join is not None else PRESETS[preset].get("view_join", "none")
    if join_name not in VIEW_JOINS:
        raise ModelError(f"Unknown view join {join_name!r}; choose one of: {', '.join(VIEW_JOINS)}.")
    join = view_join_settings(join_name, max_views)
    tok_source = str(tokenizer) if tokenizer else _decoder_tokenizer_source(decoder)
    tok = _load_tokenizer(tok_source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = _build_encoder(PRESETS[preset]["encoder"], encoder)
        if encoder is None and PRESETS[preset].get("positions") == "sincos":
            sincos_positions(enc)
        dec = _build_decoder(PRESETS[preset]["decoder"], decoder, tok)
        config = XrqEncoderDecoderConfig.from_encoder_decoder_configs(enc.config, dec.config, max_views=max_views)
        if join:
            config.view_join = join  # absent otherwise: older models' configs stay as they were
        model = XrqEncoderDecoder(config=config, encoder=enc, decoder=dec)
    set_token_ids(model, tok)
    meta = BundleMeta(
        format=FORMAT_VERSION,
        preset=preset if encoder is None or decoder is None else None,
        sources={"encoder": encoder, "decoder": decoder, "tokenizer": tok_source},
        seed=seed,
        max_views=max_views,  # also in the config; here for older xrq reading xrq.json
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        transformers_version=transformers.__version__,
    )
    model.eval()
    return Bundle(model, _processor_for(enc.config.image_size, encoder), tok, meta)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None → cuda when available, else cpu; else the device named, which must exist here."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"{str(device)!r} is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1).") from None
    if dev.type not in DEVICE_TYPES:
        raise ModelError(f"Device {str(device)!r} cannot run a model (it holds no data or is not supported); "
                         "use auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"Device {device!r} was asked for but CUDA is not available here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"Device {str(device)!r} does not exist: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s), cuda:0 and up; use one of them or auto.")
    elif dev.type != "cpu" and not _available(dev.type):
        raise ModelError(f"Device {str(device)!r} is not available here; use auto or cpu.")
    return dev


def _available(kind: str) -> bool:
    backend = getattr(torch, kind, None) if kind != "mps" else torch.backends.mps
    return bool(backend is not None and backend.is_available())


# --- building parts -------------------------------------------------------------------------------


def default_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE from the bundled vocab.json/merges.txt; <|endoftext|> is bos/eos/pad."""
    assets = resources.files("model.assets") / "gpt2"
    with resources.as_file(assets) as folder:
        # GPT2TokenizerFast is an alias of this (tokenizers-backed) class in transformers 5.
        tok = GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.pad_token = tok.eos_token
    return tok


def _load_tokenizer(source: str | Path | None) -> PreTrainedTokenizerFast:
    if source is None:
        return default_tokenizer()
    try:
        tok = cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(str(source), trust_remote_code=False))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"No tokenizer at {source}: {_why(exc)}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _decoder_tokenizer_source(decoder: str | None) -> str | None:
    """The decoder's own tokenizer when it has one: a directory with tokenizer files, or a hub id whose
    tokenizer can be had; None (GPT-2's vocabulary) otherwise."""
    if decoder is None:
        return None
    folder = Path(decoder).expanduser()
    if folder.is_dir():
        return decoder if any((folder / name).is_file() for name in _TOKENIZER_FILES) else None
    try:
        AutoTokenizer.from_pretrained(decoder, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    return decoder


def sincos_positions(encoder: PreTrainedModel) -> None:
    """Start a ViT's (learned) position embeddings at 2-D sin-cos values, as MAE does; the class token's at 0.

    Each patch's embedding then says its row and column from the first step: drawn at random with a
    small std they carry next to nothing, and a ViT trained from scratch on a few thousand studies learns
    *what* is in an image long before *where* (on bench/conditioning.py: which side an opacity is on).
    Half the channels encode the row, half the column, each as sines and cosines of geometric frequencies.
    """
    table = cast(torch.nn.Parameter, encoder.get_submodule("embeddings").position_embeddings)  # (1, 1 + G*G, C)
    patches, channels = int(table.shape[1]) - 1, int(table.shape[2])
    grid = math.isqrt(patches)
    if grid * grid != patches or channels % 4:
        raise ModelError(f"sin-cos positions need a square patch grid and channels divisible by 4, got "
                         f"{patches} patches of {channels}.")
    frequencies = 1.0 / 10000 ** (torch.arange(channels // 4, dtype=torch.float64) / (channels // 4))  # (C/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    angles_y, angles_x = rows.reshape(-1, 1) * frequencies, cols.reshape(-1, 1) * frequencies  # (G*G, C/4) each
    values = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)  # (G*G, C)
    with torch.no_grad():
        table[0, 0] = 0
        table[0, 1:] = values.to(table.dtype)


def _build_encoder(sizes: dict[str, Any], source: str | None) -> PreTrainedModel:
    if source is None:
        return AutoModel.from_config(ViTConfig(**sizes))
    config = _pretrained_config(source, "encoder")
    config.is_decoder, config.add_cross_attention = False, False
    return _pretrained(AutoModel, source, config)


def _build_decoder(
    sizes: dict[str, Any], source: str | None, tok: PreTrainedTokenizerFast
) -> PreTrainedModel:
    ids = _token_ids(tok)
    if source is None:
        settings = {**sizes, "vocab_size": len(tok), "is_decoder": True, "add_cross_attention": True,
                    "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
        config = GPT2Config(**settings)
        return AutoModelForCausalLM.from_config(config)
    config = _pretrained_config(source, "decoder")
    if len(tok) > config.vocab_size:
        raise ModelError(
            f"The tokenizer has {len(tok)} tokens but decoder {source} only {config.vocab_size}; "
            "use the decoder's own tokenizer (--tokenizer)."
        )
    config.is_decoder, config.add_cross_attention = True, True  # cross-attention layers start random
    config.bos_token_id, config.eos_token_id, config.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    return _pretrained(AutoModelForCausalLM, source, config)


def _pretrained_config(source: str, part: str) -> Any:
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"No pretrained {part} at {source!r} (a local directory or hub id): {_why(exc)}"
        ) from exc


def _pretrained(auto: Any, source: str, config: Any) -> PreTrainedModel:
    try:
        model = auto.from_pretrained(source, config=config, use_safetensors=True, dtype=torch.float32,
                                     trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"Could not load safetensors weights from {source!r}: {_why(exc)}") from exc
    return cast(PreTrainedModel, model)


def _why(exc: BaseException) -> str:
    """transformers' reason in one line; its advice to pass `trust_remote_code=True` replaced by ours."""
    text = " ".join(str(exc).split())
    if "trust_remote_code" in text:
        return ("it names Python code of its own to build it (an `auto_map` or a type transformers does not "
                "know), and xrq never runs code from a model directory; use a part of a type transformers "
                "knows (ViT, GPT-2, their tokenizers), saved with safetensors")
    return text


def _processor_for(image_size: int, source: str | None) -> ViTImageProcessorPil:
    """The encoder's own preprocessing when it ships one, else ViT's (mean/std 0.5); size always fits."""
    processor = None
    if source is not None:
        try:
            processor = ViTImageProcessorPil.from_pretrained(source, trust_remote_code=False)
        except (OSError, ValueError):
            processor = None
    if processor is None:
        processor = ViTImageProcessorPil()
    processor.size = {"height": image_size, "width": image_size}
    return processor


def _token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    eos = tok.eos_token_id
    bos = tok.bos_token_id if tok.bos_token_id is not None else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return {"bos": bos, "eos": eos, "pad": pad}


def set_token_ids(model: XrqEncoderDecoder, tok: PreTrainedTokenizerFast) -> None:
    """Token ids go on the config (training's label shift) and generation_config (all generate reads)."""
    ids = _token_ids(tok)
    for target in (model.config, model.generation_config):
        target.decoder_start_token_id = ids["bos"]
        target.bos_token_id = ids["bos"]
        target.eos_token_id = ids["eos"]
        target.pad_token_id = ids["pad"]
    model.config.vocab_size = cast(Any, model.config.decoder).vocab_size
