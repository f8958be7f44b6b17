"""The encoder-decoder and everything that travels with it: build, save, load.

A `Bundle` is model + image processor + tokenizer + xrq's own metadata, so preprocessing can never
drift from the weights (the open_clip pattern). A saved bundle is one self-describing directory.

The model is `XrqEncoderDecoder`: transformers' VisionEncoderDecoder (ViT encoder, GPT-2 decoder with
cross-attention) taught about multi-view studies. All views of a batch go through the encoder in one
pass, each study's views are joined into one sequence, and padded views are masked out of
cross-attention with a (B, V*T) encoder attention mask built from a (B, V) `view_mask`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
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
    VisionEncoderDecoderConfig,
    ViTConfig,
    ViTImageProcessorPil,
)

from model import identity
from model.directory import HUB_PREFIX, META_FILE, check_complete, locate, read_meta
from model.errors import ModelError, ModelFormatError, ModelNotFoundError
from model.multiview import XrqEncoderDecoder
from model.train_config import VIEW_JOINS, view_join_settings

# xrq shows its own progress; transformers' per-load bars would clutter every CLI command and worker log.
transformers.utils.logging.disable_progress_bar()

FORMAT_VERSION = 1
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # where a model can run; "meta" holds no data
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")

# Sizes only; the vocabulary always comes from the tokenizer. "base" matches ViT-B/16 and GPT-2 small,
# so pretrained `google/vit-base-patch16-224-in21k` and `gpt2` parts drop in.
PRESETS: dict[str, dict] = {
    "tiny": {
        # A wide random init so an untrained tiny model's words visibly depend on the image (tests).
        "encoder": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "intermediate_size": 128, "image_size": 224, "patch_size": 16, "initializer_range": 0.3},
        "decoder": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 256, "initializer_range": 0.3},
    },
    "small": {
        # Trains from scratch on a CPU in minutes and learns where findings are (bench/conditioning.py):
        # 32-px patches (49 tokens a view), standard 0.02 init. The decoder's third layer and 8 heads are
        # what it takes to say *where* (seed 0, 4500 steps: opacity side 0.54 with 2 layers and 4 heads,
        # 0.72 with 3 layers, 0.91 with 3 layers and 8 heads).
        "encoder": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "intermediate_size": 256, "image_size": 224, "patch_size": 32},
        "decoder": {"n_embd": 128, "n_layer": 3, "n_head": 8, "n_positions": 256},
        "positions": "sincos",  # see `sincos_positions`
    },
    "base": {
        "encoder": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "image_size": 224, "patch_size": 16},
        "decoder": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024},
    },
}

# small + a `ViewJoin` (model/multiview.py): view-slot embedding and 2-D positions after the encoder, so
# cross-attention knows which view and where (README: the conditioning benchmark). Train with --augment.
PRESETS["small-v2"] = {**PRESETS["small"], "view_join": "both"}


@dataclass
class Bundle:
    """A model with the preprocessing, tokenizer and metadata it was trained with."""

    model: XrqEncoderDecoder
    processor: ViTImageProcessorPil
    tokenizer: PreTrainedTokenizerFast
    meta: dict[str, Any]
    path: Path | None = None
    _digests: dict[str, tuple[Any, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The directory name when saved or loaded, else the hub id or preset it was built from."""
        if self.path is not None:
            return self.path.name
        return str(self.meta.get("source") or self.meta.get("preset") or "unsaved")

    @property
    def max_views(self) -> int:
        """Views per study the model looks at; extra views are dropped by preprocessing."""
        return int(self.meta.get("max_views", 4))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 hex of what decides a report: weights, architecture, tokenizer, preprocessing, views
        (see `model.identity`). What "the same model" means in the database.

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


def build(
    preset: str = "tiny",
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    tokenizer: str | Path | None = None,
    seed: int = 0,
    max_views: int = 4,
    view_join: str | None = None,
) -> Bundle:
    """Build a fresh bundle: from the preset's configs, or from pretrained parts (hub ids or directories).

    The preset only sizes the parts not given (with both parts given, `meta["preset"]` is None).
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
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc.config, dec.config)
        if join:
            config.view_join = join  # absent otherwise: older models' configs stay as they were
        model = XrqEncoderDecoder(config=config, encoder=enc, decoder=dec)
    _set_token_ids(model, tok)
    meta = {
        "format": FORMAT_VERSION,
        "preset": preset if encoder is None or decoder is None else None,
        "sources": {"encoder": encoder, "decoder": decoder, "tokenizer": tok_source},
        "seed": seed,
        "max_views": max_views,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "transformers_version": transformers.__version__,
        "training": None,
        "scores": {},
    }
    model.eval()
    return Bundle(model, _processor_for(enc.config.image_size, encoder), tok, meta)


def save(bundle: Bundle, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the bundle as one directory: safetensors, configs, tokenizer, preprocessing, xrq.json, the
    modelling code that plain transformers loads with `trust_remote_code` (multiview.py, `auto_map`),
    and a model card (README.md).

    The bundle then points at it (`path`), and its meta records the fingerprint of what was saved.
    """
    from model.card import write_card

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file; give a directory to save the model into.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; choose a new directory or pass overwrite (--force).")
    out.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(out, safe_serialization=True)  # with multiview.py: see its register_for_auto_class
    for weights in out.glob("*.safetensors"):  # written 0600; readable like the rest (shared volumes)
        shutil.copymode(out / "config.json", weights)
    bundle.tokenizer.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    meta = {**bundle.meta, "fingerprint": bundle.fingerprint}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    bundle.meta = meta
    bundle.path = out
    write_card(bundle, out)
    return out


def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> Bundle:
    """Load a saved bundle from a directory, or a hub id (`org/name`, or plainly `hf-hub:org/name`).

    Weights are read from safetensors only: pickled checkpoints are refused, never opened. A damaged
    directory (unreadable JSON, a cut-short weights file, a config that does not fit the weights) is
    refused with what to do, before or instead of a half-loaded model.
    The model comes back in eval mode on `device` (default: cuda if available, else cpu).
    """
    dev = resolve_device(device)
    path = locate(name_or_path)
    check_complete(path)
    meta = read_meta(path) or {"format": FORMAT_VERSION}
    try:
        with _quiet_transformers():  # its load report goes to the log; ours is the error below
            loaded = XrqEncoderDecoder.from_pretrained(
                path, use_safetensors=True, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True)  # reported as ours, below, instead of a RuntimeError
        model, info = cast(tuple[XrqEncoderDecoder, dict[str, Any]], loaded)
        tok = cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(path))
        processor = ViTImageProcessorPil.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path} could not be loaded as an xrq model: {exc}") from exc
    _check_fits_weights(path, info)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    local = not str(name_or_path).startswith(HUB_PREFIX) and Path(name_or_path).expanduser().exists()
    if not local:
        meta["source"] = str(name_or_path)  # a hub id: its name, not the cache folder's
    _set_token_ids(model, tok)
    cast(torch.nn.Module, model).to(dev).eval()
    return Bundle(model, processor, tok, meta, path if local else None)


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


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own log below errors while it loads (its load report would be printed to users)."""
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_fits_weights(path: Path, info: dict[str, Any]) -> None:
    """Refuse weights that config.json does not describe: missing, extra or differently sized tensors."""
    problems = [f"{len(info['missing_keys'])} tensors missing from the weights (e.g. {min(info['missing_keys'])})"
                if info["missing_keys"] else "",
                f"{len(info['unexpected_keys'])} tensors in the weights that the config has no place for "
                f"(e.g. {min(info['unexpected_keys'])})" if info["unexpected_keys"] else ""]
    mismatched = sorted(info["mismatched_keys"])
    if mismatched:
        name, stored, wanted = mismatched[0]
        problems.append(f"{len(mismatched)} tensors of other sizes (e.g. {name}: {tuple(stored)} in the weights, "
                        f"{tuple(wanted)} in the config)")
    found = [p for p in problems if p]
    if found:
        raise ModelFormatError(
            f"{path}/config.json does not describe the weights in its model.safetensors: {'; '.join(found)}. "
            "The config was edited or belongs to other weights: restore the config.json saved with these "
            "weights, or copy the whole model directory again.")


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
        tok = cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(str(source)))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"No tokenizer at {source}: {exc}") from exc
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
        AutoTokenizer.from_pretrained(decoder)
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
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"No pretrained {part} at {source!r} (a local directory or hub id): {exc}"
        ) from exc


def _pretrained(auto: Any, source: str, config: Any) -> PreTrainedModel:
    try:
        model = auto.from_pretrained(source, config=config, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"Could not load safetensors weights from {source!r}: {exc}") from exc
    return cast(PreTrainedModel, model)


def _processor_for(image_size: int, source: str | None) -> ViTImageProcessorPil:
    """The encoder's own preprocessing when it ships one, else ViT's (mean/std 0.5); size always fits."""
    processor = None
    if source is not None:
        try:
            processor = ViTImageProcessorPil.from_pretrained(source)
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


def _set_token_ids(model: XrqEncoderDecoder, tok: PreTrainedTokenizerFast) -> None:
    """Token ids go on the config (training's label shift) and generation_config (all generate reads)."""
    ids = _token_ids(tok)
    for target in (model.config, model.generation_config):
        target.decoder_start_token_id = ids["bos"]
        target.bos_token_id = ids["bos"]
        target.eos_token_id = ids["eos"]
        target.pad_token_id = ids["pad"]
    model.config.vocab_size = cast(Any, model.config.decoder).vocab_size
