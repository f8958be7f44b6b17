"""Every error that model/ raises on purpose. The CLI prints their messages as `Error: ...`.

Each message says what went wrong and what to do about it. All are `XrqError`s (common/errors.py); a
folder, CSV or file that cannot be used is an `InputError`, not a `ModelError`.
"""

from common.errors import InputError, XrqError


class ModelError(XrqError):
    """Base class: raised for failures a user can cause or fix in model/."""


class ModelNotFoundError(ModelError):
    """Raised when a model path or hub id names nothing that can be loaded."""


class ModelFormatError(ModelError):
    """Raised when a model directory exists but is not a complete xrq model (no weights, no config...)."""


class ImageError(InputError):
    """Raised when a file cannot be turned into a picture; `reason` is stored with the failed image."""

    def __init__(self, reason: str, *, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient  # True: trying again later may work (I/O error, memory), not bad content


class ScanError(InputError):
    """Raised when a submitted folder cannot be scanned: not a folder, bad --pattern, unknown grouping."""


class TruthFormatError(InputError):
    """Raised when a ground-truth or split CSV is missing, unreadable, or lacks a needed column."""


class ScoringError(ModelError):
    """Raised when reports cannot be scored: nothing to score, or hypotheses without a reference."""


class TrainingError(ModelError):
    """Raised when training cannot start: no usable study, a bad option combination, a stale checkpoint."""
