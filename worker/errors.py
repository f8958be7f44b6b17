"""Every error that worker/ raises on purpose. The CLI prints their messages as `Error: ...`.

All are `XrqError`s (common/errors.py).
"""

from common.errors import XrqError


class WorkerError(XrqError):
    """Base class: raised for failures a user can cause or fix in worker/."""


class SettingsError(WorkerError):
    """Raised when an XRQ_* variable or option has a value xrq cannot use."""


class NoModelError(WorkerError):
    """Raised when work needs a model and none was named (no --model, no XRQ_MODEL)."""


class BrokerUnavailableError(WorkerError):
    """Raised when XRQ_BROKER_URL is set but the broker cannot be reached; the job stays pending."""


class ModelMismatchError(WorkerError):
    """Raised when a worker cannot load the weights a job was submitted with (fingerprint differs)."""


class EvaluationInputError(WorkerError):
    """Raised when an evaluation is asked for something it cannot score (no source, no ground truth)."""


class WaitTimeoutError(WorkerError):
    """Raised when a job followed with a time limit is not finished by then (the job goes on)."""


class NoEvidenceError(WorkerError):
    """Raised when a report's attention is asked for but it has no stored tokens, or its views cannot be read."""


class UnfinishedError(WorkerError):
    """Raised when an in-process run ends with studies it could not finish (the database full or away,
    a stage failing): they stay open or failed retryably, and the command must not exit 0."""
