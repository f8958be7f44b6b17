"""A model's fingerprint: what "the same model" means in the database ("already reported by this model").

Everything that decides the report for a given study is in it: the architecture config and the
weights, the tokenizer that turns the generated ids into text (vocabulary, special tokens, decoder),
the image preprocessing, and how many views per study the model looks at. A copy with the same
weights and another tokenizer is another model. What changes on save/load, with the device, or with
the runtime (dtype names, attention implementation, library versions, the remote-code `auto_map`)
is left out, so the fingerprint survives a copy, a reload and a move between devices.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import torch

# Config keys that change on save/load or with the runtime, not with the model.
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures",
             "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "use_cache", "auto_map",
             "max_views"}  # max_views: hashed on its own (`combine`), also for models saved before the config had it
# Parts of a tokenizers JSON that are runtime state (set by a call with padding=...), not the tokenizer.
_TOKENIZER_STATE = {"padding", "truncation", "version"}
# Processor keys that name the class rather than what it does to an image.
_PROCESSOR_NAMES = {"image_processor_type", "processor_class", "_processor_class"}


def config_for_hash(config: Any) -> str:
    """The architecture config as canonical JSON, without the keys that change on save/load."""
    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in d.items() if k not in _VOLATILE}
        return d

    return json.dumps(clean(config.to_dict()), sort_keys=True, default=str)


def weights_digest(state: dict[str, torch.Tensor], config: str) -> str:
    """sha256 hex of the config and every tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256(config.encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(cast(Any, t.reshape(-1).view(torch.uint8).numpy()))  # hashed in place, no copy
    return h.hexdigest()


def tokenizer_digest(tok: Any) -> str:
    """sha256 hex of the tokenizer: its full definition (vocabulary, merges, normaliser, decoder,
    added tokens) and the bos/eos/pad ids generation uses."""
    special = {name: getattr(tok, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in _TOKENIZER_STATE}
    else:  # a tokenizer without a tokenizers backend: its vocabulary is what it is
        definition = {"vocab": sorted(tok.get_vocab().items())}
    text = json.dumps({"tokenizer": definition, "special": special}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def processor_digest(processor: Any) -> str:
    """sha256 hex of the image preprocessing settings (size, resample, rescale, mean/std, ...)."""
    settings = {k: v for k, v in processor.to_dict().items() if k not in _PROCESSOR_NAMES}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def combine(weights: str, tokenizer: str, processor: str, max_views: int) -> str:
    """The fingerprint: one sha256 hex over the parts' digests."""
    parts = {"weights": weights, "tokenizer": tokenizer, "processor": processor, "max_views": max_views}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
