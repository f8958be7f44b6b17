"""What decides the weights a training run produces: `TrainConfig`, stored with every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from model.defaults import DEFAULT_MAX_VIEWS
from model.training.tokenizer import DEFAULT_VOCAB_SIZE

BEST_METRICS = ("bleu_4", "bleu_1", "rouge_l", "cider", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the weights a run produces; stored with every checkpoint.

    `max_steps`, when set, wins over `epochs`. `max_tokens` caps each target report (eos included)
    and the length of the reports generated for validation. `dropout` overrides every dropout layer's
    probability during this training (the saved configs keep theirs: dropout is off at inference anyway).
    `init_std` is the standard deviation the parts trained from scratch (no --init, --encoder or --decoder)
    start from, instead of their preset's: the tiny preset's 0.3 makes an untrained model's words depend
    on the image (tests want that) but saturates attention, so training memorises studies instead of
    learning where to look; the small preset (0.02) is the one to train from scratch. 0 keeps the preset's own.
    `augment` shifts, zooms and re-exposes each training view at random (model/training/augment.py; never a flip).
    `view_join` overrides the preset's multi-view join (`model.defaults.VIEW_JOINS`; None: the preset's).
    """

    reports: str
    projections: str
    images: str
    init: str | None = None
    preset: str = "tiny"
    encoder: str | None = None
    decoder: str | None = None
    tokenizer: str = "gpt2"  # "gpt2": the real GPT-2 vocabulary; "train": a BPE fitted to the training reports
    vocab_size: int = DEFAULT_VOCAB_SIZE
    split: str = "random"
    split_file: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    text: str = "findings"
    views: str = "all"
    max_views: int = DEFAULT_MAX_VIEWS
    max_tokens: int = 128
    epochs: float = 10.0
    max_steps: int | None = None
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 100
    clip: float = 1.0
    dropout: float | None = None  # None: the model's own (GPT-2's 0.1); 0 for memorising a few studies
    init_std: float = 0.0  # 0: the preset's own; see the docstring
    eval_every: int = 200
    best_metric: str = "bleu_4"
    bf16: bool = True
    augment: bool = False
    view_join: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
