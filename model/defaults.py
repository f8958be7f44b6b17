"""The numbers several packages must agree on, in one module that imports no torch (nor anything heavy):
the model presets, the limits on beams and sequences, and the generation settings with their defaults.

The CLI and worker/settings.py read them without loading torch (`xrq --help` stays fast); model/ builds
and generates with the same objects, so there is no second copy to keep equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from model.errors import ModelError

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

# small + a `ViewJoin` (model/network/multiview.py): view-slot embedding and 2-D positions after the encoder,
# so cross-attention knows which view and where (README: the conditioning benchmark). Train with --augment.
PRESETS["small-v2"] = {**PRESETS["small"], "view_join": "both"}

PRESET_NAMES = tuple(PRESETS)  # what `xrq model init --preset` and `xrq train --preset` offer

DEFAULT_MAX_VIEWS = 4  # views of a study a model looks at, unless its config says otherwise

ATTENTION_METHODS = ("attention", "relevance", "occlusion")
"""What a map of `xrq show --attention` is (model/inference/attention.py): the decoder's raw cross-attention,
that attention weighted by its gradient and carried back through the encoder, or how far each sentence's
probability falls with each window of the image painted over. The first is the default."""

VIEW_JOINS = ("none", "embedding", "positions", "both")
"""What the multi-view join adds to each view's tokens (model/network/multiview.py's `ViewJoin`): nothing,
the view-slot embedding, the 2-D sin-cos positions, or both."""


def view_join_settings(name: str, max_views: int) -> dict[str, Any] | None:
    """`config.view_join` for a `VIEW_JOINS` name; None for "none" (the plain join, no such key)."""
    if name == "none":
        return None
    return {"views": max_views, "embedding": name in ("embedding", "both"),
            "positions": "sincos" if name in ("positions", "both") else None}

DEFAULT_MAX_NEW_TOKENS = 60  # the field's report length (R2Gen: 60 tokens)

# Bounds on what scales memory, checked before any work: a beam is a whole extra sequence, with its own
# KV cache and its own row of vocabulary-wide scores at every step (100,000 beams grew to 21 GB).
MAX_BEAMS = 32
MAX_SEQUENCES = 8192  # studies x beams in one batch


@dataclass(frozen=True)
class GenerationSettings:
    """How reports are decoded; `as_dict()` is stored with every report.

    num_beams 1 is greedy search; more is beam search. length_penalty only matters for beams
    (> 1 favours longer reports). no_repeat_ngram_size 0 is off; n > 0 forbids repeating any n-gram.
    """

    num_beams: int = 1
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ModelError(f"num_beams must be at least 1, got {self.num_beams}.")
        if self.num_beams > MAX_BEAMS:
            raise ModelError(f"num_beams must be at most {MAX_BEAMS}, got {self.num_beams}: each beam is a whole "
                             "extra report in memory, and beyond a handful they stop improving reports. "
                             "Lower XRQ_NUM_BEAMS (--num-beams).")
        if self.max_new_tokens < 1:
            raise ModelError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.no_repeat_ngram_size < 0:
            raise ModelError(f"no_repeat_ngram_size must be 0 (off) or more: {self.no_repeat_ngram_size}.")

    def check_fits(self, positions: int | None, batch_size: int | None = None) -> None:
        """Refuse, before any work, reports longer than a decoder of `positions` positions holds (it would crash
        mid-batch) and batches of more sequences (studies x beams) than MAX_SEQUENCES (`batch_size` None:
        auto, which stays within it)."""
        if batch_size is not None and batch_size * self.num_beams > MAX_SEQUENCES:
            raise ModelError(f"a batch of {batch_size} studies with {self.num_beams} beams is "
                             f"{batch_size * self.num_beams} sequences at once, more than {MAX_SEQUENCES}: "
                             "lower XRQ_BATCH_SIZE (--batch-size) or XRQ_NUM_BEAMS (--num-beams), or use auto")
        if positions and self.max_new_tokens + 1 > positions:  # + the start token
            raise ModelError(f"this model's decoder writes at most {positions - 1} tokens, not "
                             f"{self.max_new_tokens}: lower XRQ_MAX_NEW_TOKENS (--max-new-tokens)")

    def as_dict(self) -> dict[str, Any]:
        """The settings, plus the search they amount to ("greedy" or "beam")."""
        return {**asdict(self), "search": "beam" if self.num_beams > 1 else "greedy"}

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`; beam-only options are passed only with beams."""
        kwargs: dict[str, Any] = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                                  "do_sample": False}
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.no_repeat_ngram_size > 0:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


def decoder_positions(decoder: Any) -> int | None:
    """How many positions a decoder config (an object, or its dict from config.json) has; None if it does not say."""
    def get(key: str) -> Any:
        return decoder.get(key) if isinstance(decoder, dict) else getattr(decoder, key, None)

    positions = get("n_positions") or get("max_position_embeddings")
    return int(positions) if positions else None
