"""The encoder-decoder and everything that travels with it: build, save, load.

A `Bundle` is model + image processor + tokenizer + xrq's own metadata, so preprocessing can never
drift from the weights (the open_clip pattern). A saved bundle is one self-describing directory.

The model is `XrqEncoderDecoder`: transformers' VisionEncoderDecoder (ViT encoder, GPT-2 decoder with
cross-attention) taught about multi-view studies. All views of a batch go through the encoder in one
pass, each study's views are joined into one sequence, and padded views are masked out of
cross-attention with a (B, V*T) encoder attention mask built from a (B, V) `view_mask`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
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

from model.errors import ModelError, ModelFormatError, ModelNotFoundError
from model.multiview import XrqEncoderDecoder

# xrq shows its own progress; transformers' per-load bars would clutter every CLI command and worker log.
transformers.utils.logging.disable_progress_bar()

FORMAT_VERSION = 1
META_FILE = "xrq.json"

# Sizes only; the vocabulary always comes from the tokenizer. "base" matches ViT-B/16 and GPT-2 small,
# so pretrained `google/vit-base-patch16-224-in21k` and `gpt2` parts drop in.
PRESETS: dict[str, dict] = {
    "tiny": {
        # A wide random init so an untrained tiny model's words visibly depend on the image (tests).
        "encoder": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "intermediate_size": 128, "image_size": 224, "patch_size": 16, "initializer_range": 0.3},
        "decoder": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 256, "initializer_range": 0.3},
    },
    "base": {
        "encoder": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "intermediate_size": 3072, "image_size": 224, "patch_size": 16},
        "decoder": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024},
    },
}


@dataclass
class Bundle:
    """A model with the preprocessing, tokenizer and metadata it was trained with."""

    model: XrqEncoderDecoder
    processor: ViTImageProcessorPil
    tokenizer: PreTrainedTokenizerFast
    meta: dict[str, Any]
    path: Path | None = None
    _fingerprint: tuple[Any, str] | None = field(default=None, repr=False, compare=False)

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
        """sha256 hex of the weights and architecture config: what "the same model" means in the database.

        Identical after save/load or a move between devices; cached until any parameter changes
        (tensor versions are part of the cache key, so an optimizer step invalidates it).
        """
        state = self.model.state_dict()
        config = _config_for_hash(self.model.config)
        key = (config, tuple((k, t.data_ptr(), t._version, t.dtype) for k, t in state.items()))
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, _hash_weights(state, config))
        return self._fingerprint[1]


def build(
    preset: str = "tiny",
    *,
    encoder: str | None = None,
    decoder: str | None = None,
    tokenizer: str | Path | None = None,
    seed: int = 0,
    max_views: int = 4,
) -> Bundle:
    """Build a fresh bundle: from the preset's configs, or from pretrained parts (hub ids or directories).

    Random weights (all of them, or the new cross-attention on top of pretrained parts) come from
    `seed`, so the same arguments give identical weights. The global RNG is left untouched.
    """
    if preset not in PRESETS:
        raise ModelError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    if max_views < 1:
        raise ModelError(f"max_views must be at least 1, got {max_views}.")
    tok = _load_tokenizer(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = _build_encoder(PRESETS[preset]["encoder"], encoder)
        dec = _build_decoder(PRESETS[preset]["decoder"], decoder, tok)
        model = XrqEncoderDecoder(encoder=enc, decoder=dec)
    _set_token_ids(model, tok)
    meta = {
        "format": FORMAT_VERSION,
        "preset": preset,
        "sources": {"encoder": encoder, "decoder": decoder,
                    "tokenizer": str(tokenizer) if tokenizer else None},
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
    """Write the bundle as one directory (safetensors, configs, tokenizer, preprocessing, xrq.json).

    The bundle then points at it (`path`), and its meta records the fingerprint of what was saved.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file; give a directory to save the model into.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; choose a new directory or pass overwrite (--force).")
    out.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(out, safe_serialization=True)
    for weights in out.glob("*.safetensors"):  # written 0600; readable like the rest (shared volumes)
        shutil.copymode(out / "config.json", weights)
    bundle.tokenizer.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    meta = {**bundle.meta, "fingerprint": bundle.fingerprint}
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    bundle.meta = meta
    bundle.path = out
    return out


def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> Bundle:
    """Load a saved bundle from a directory, or (only for a string that is no existing path) a hub id.

    Weights are read from safetensors only: pickled checkpoints are refused, never opened.
    The model comes back in eval mode on `device` (default: cuda if available, else cpu).
    """
    path = _locate(name_or_path)
    _check_complete(path)
    try:
        model = XrqEncoderDecoder.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
        tok = cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(path))
        processor = ViTImageProcessorPil.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"{path} could not be loaded as an xrq model: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    meta_file = path / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"format": FORMAT_VERSION}
    local = Path(name_or_path).expanduser().exists()
    if not local:
        meta["source"] = str(name_or_path)  # a hub id: its name, not the cache folder's
    _set_token_ids(model, tok)
    cast(torch.nn.Module, model).to(resolve_device(device)).eval()
    return Bundle(model, processor, tok, meta, path if local else None)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None → cuda when available, else cpu; anything else as given (cuda must exist)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"Device {device!r} was asked for but CUDA is not available here; use --device cpu.")
    return dev


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


# --- loading --------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_NOT_FOUND_HINT = "Create one with `xrq model init --out DIR`, or pass --model with a model directory."


def _locate(name_or_path: str | Path) -> Path:
    """An existing path as is; else a string that looks like a hub id is fetched (json/safetensors only)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFormatError(f"{path} is a file; an xrq model is a directory (see `xrq model init`).")
        return path
    if isinstance(name_or_path, Path) or not _HUB_ID.match(name_or_path):
        raise ModelNotFoundError(f"No model directory at {path}. {_NOT_FOUND_HINT}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{name_or_path!r} is neither a directory nor a reachable hub model ({type(exc).__name__}). "
            f"{_NOT_FOUND_HINT}"
        ) from exc


def _check_complete(path: Path) -> None:
    """Refuse a directory that is not a whole model, naming what is missing (and pickles)."""
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if not has_weights and any(path.glob("pytorch_model*.bin")):
        raise ModelFormatError(
            f"{path} holds only pickled weights (pytorch_model.bin), which xrq never loads because "
            "unpickling can run code. Convert them to model.safetensors with a trusted tool first."
        )
    missing = [] if has_weights else ["model.safetensors (weights)"]
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        missing.append("tokenizer.json (tokenizer)")
    if not (path / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json (image preprocessing)")
    if missing:
        raise ModelFormatError(f"{path} is not a complete xrq model; missing: {', '.join(missing)}. "
                               "Save one with `xrq model init --out DIR`.")
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type != VisionEncoderDecoderConfig.model_type:
        raise ModelFormatError(
            f"{path}/config.json describes a {model_type!r} model, not a vision-encoder-decoder."
        )


# --- fingerprint ----------------------------------------------------------------------------------

# Config keys that change on save/load or with the runtime, not with the model.
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures",
             "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "use_cache"}


def _config_for_hash(config: Any) -> str:
    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if k not in _VOLATILE}
        return d

    return json.dumps(clean(config.to_dict()), sort_keys=True, default=str)


def _hash_weights(state: dict[str, torch.Tensor], config: str) -> str:
    h = hashlib.sha256(config.encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(cast(Any, t.reshape(-1).view(torch.uint8).numpy()))  # hashed in place, no copy
    return h.hexdigest()
