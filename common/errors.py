"""The root of every error xrq raises on purpose, so the CLI translates one type into `Error: ...`.

Each package names its own errors under it: `model.errors` (ModelError), `worker.errors` (WorkerError),
`db.errors` (DatabaseError). What a user gave that cannot be used (a folder to scan, a ground-truth CSV,
a file that is not a picture) is an `InputError`, whichever package finds it: it is not the model's fault.
Each message says what went wrong and what to do about it.
"""


class XrqError(Exception):
    """Base class of every error xrq raises for failures a user can cause or fix."""


class InputError(XrqError):
    """Raised when something the user gave (a folder, a CSV, an image file) cannot be used as it is."""
