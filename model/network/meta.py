"""xrq.json, typed: `BundleMeta`, what xrq records beside a model's weights (how it was made, trained and scored).

The file stays plain JSON (older xrq reads it, people read it); this class is how the code reads and writes
it, with defaults for what an older or foreign file leaves out, and unknown keys kept as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.defaults import DEFAULT_MAX_VIEWS, decoder_positions
from model.errors import ModelFormatError
from model.network.directory import HUB_PREFIX, META_FILE, check_complete, locate, read_json, read_meta

FORMAT_VERSION = 1
_SOURCE_PARTS = ("encoder", "decoder", "tokenizer")
_OPTIONAL = ("generation", "fingerprint", "source", "code")  # written only when set, as before


@dataclass
class BundleMeta:
    """What xrq.json holds. `sources`: the encoder, decoder and tokenizer a model was built from (None: the
    preset's random parts, GPT-2's vocabulary). `training` and `scores`: how `xrq train` made it and how it
    scored on validation. `generation`: what inference should use unless told otherwise (max_new_tokens).
    `fingerprint`: the fingerprint of what was saved. `source`: the hub id it was loaded from. `code`: the sha256
    of each file of modelling code saved beside the weights (checked before every load: model/network/code.py)."""

    format: int = FORMAT_VERSION
    preset: str | None = None
    sources: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(_SOURCE_PARTS))
    seed: int | None = None
    max_views: int = DEFAULT_MAX_VIEWS
    created_at: str | None = None
    transformers_version: str | None = None
    training: dict[str, Any] | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    source: str | None = None
    code: dict[str, str] = field(default_factory=dict)  # file -> sha256 of the modelling code saved (network/code.py)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this xrq does not know, kept on save

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "xrq.json") -> BundleMeta:
        known = {f.name for f in fields(cls)} - {"extra"}
        meta = cls(**{k: v for k, v in values.items() if k in known and v is not None},  # None: the default
                   extra={k: v for k, v in values.items() if k not in known})
        if not isinstance(meta.sources, dict) or not isinstance(meta.scores, dict) \
                or not isinstance(meta.generation, dict) or not isinstance(meta.max_views, int) or meta.max_views < 1:
            raise ModelFormatError(f"{where} has a malformed entry (sources, scores, generation or max_views); "
                                   "restore the file saved with the model, or copy the whole directory again.")
        meta.sources = {**dict.fromkeys(_SOURCE_PARTS), **meta.sources}
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of xrq.json (and of the models table's meta column)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in _OPTIONAL:
            if not out[name]:
                del out[name]
        return {**self.extra, **out}

    @property
    def recommended_max_new_tokens(self) -> int | None:
        """The report length the model recommends (what it was trained on), if it says."""
        value = self.generation.get("max_new_tokens")
        return int(value) if value else None


@dataclass(frozen=True)
class SavedModel:
    """What a saved model says about itself, read without loading its weights (nor importing torch).

    `fingerprint` is the one recorded when it was saved: `xrq submit` with a broker records jobs under it,
    and a worker loads the weights and refuses them if they do not match (worker.runtime.job_bundle).
    """

    name: str
    path: Path | None  # None: a hub model
    meta: BundleMeta
    positions: int | None  # the decoder's, from config.json

    @property
    def fingerprint(self) -> str | None:
        return self.meta.fingerprint


def describe(name_or_path: str | Path) -> SavedModel:
    """A model directory (or hub id) checked whole, and its recorded facts; the weights' header only is read."""
    from model.network import code

    path = locate(name_or_path)
    check_complete(path)
    stored = read_meta(path)
    code.check(path, stored)  # a directory whose code was edited is refused here too, before any job is recorded
    meta = BundleMeta.from_dict(stored, where=str(path / META_FILE)) if stored is not None else BundleMeta()
    local = not str(name_or_path).startswith(HUB_PREFIX) and Path(name_or_path).expanduser().exists()
    if not local:
        meta.source = str(name_or_path)
    config = read_json(path / "config.json")
    if isinstance(config.get("max_views"), int):
        meta.max_views = config["max_views"]
    decoder = config.get("decoder")
    return SavedModel(name=path.name if local else str(name_or_path), path=path if local else None, meta=meta,
                      positions=decoder_positions(decoder) if isinstance(decoder, dict) else None)
