"""xrq.json, typed: `BundleMeta`, what xrq records beside a model's weights (how it was made, trained and scored).

The file stays plain JSON (older xrq reads it, people read it); this class is how the code reads and writes
it, with defaults for what an older or foreign file leaves out, and unknown keys kept as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from model.defaults import DEFAULT_MAX_VIEWS
from model.errors import ModelFormatError

FORMAT_VERSION = 1
_SOURCE_PARTS = ("encoder", "decoder", "tokenizer")
_OPTIONAL = ("generation", "fingerprint", "source")  # written only when set, as before


@dataclass
class BundleMeta:
    """What xrq.json holds. `sources`: the encoder, decoder and tokenizer a model was built from (None: the
    preset's random parts, GPT-2's vocabulary). `training` and `scores`: how `xrq train` made it and how it
    scored on validation. `generation`: what inference should use unless told otherwise (max_new_tokens).
    `fingerprint`: the fingerprint of what was saved. `source`: the hub id it was loaded from."""

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
