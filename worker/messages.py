"""What a task message may say, checked before a task does anything: ids and a few named choices.

Whoever reaches the broker can write a message, so a message is input, not a call from xrq. Each task
takes ids (and, to score, the name of a baseline, split or collection), never a path, a file or an option
of the code it runs: `xrq.evaluate` takes no predictions file and no output folder. Each argument is
checked against its task's schema: its type (an int is an int: a job id of 1.5 is refused, not rounded,
and `true` is not 1), its range, and its name (an unknown key is refused). The ids of a message are at
most what `xrq submit` sends in one (MAX_STUDIES_PER_MESSAGE), each once.

A message that does not fit raises InvalidMessageError, whose text is one line; the task rejects it
(not retried, not requeued). Every message also names its deployment (see worker/deployment.py).

Pure Python: no Celery, no database, so a worker can check a message before touching either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.errors import WorkerError
from worker.pipeline import MAX_STUDIES_PER_MESSAGE

MAX_ID = 2**31 - 1  # the database's integer ids
DEPLOYMENT_KEY = "deployment"  # the keyword every message carries (worker/deployment.py)
_DEPLOYMENT = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[\w.:@+-]{1,200}")  # a model's or a collection's name, a fingerprint: no "/", no spaces
BASELINES = ("most-frequent",)  # worker/evaluate.py's
SPLITS = ("train", "val", "test")  # `xrq evaluate --split`'s
TEXTS = ("findings", "impression", "both")
_SHOWN = 60  # characters of a bad value quoted in the one-line reason


class InvalidMessageError(WorkerError):
    """Raised when a task message's arguments do not fit its task's schema (type, range, known keys)."""


@dataclass(frozen=True)
class GenerateMessage:
    job_id: int
    study_ids: list[int]
    deployment: str | None


@dataclass(frozen=True)
class EvaluateMessage:
    options: dict[str, Any]  # run_evaluation's keywords: exactly one source, then split, text, ...
    deployment: str | None


@dataclass(frozen=True)
class BacklogMessage:
    deployment: str | None


def parse_generate(args: Sequence[Any], kwargs: Mapping[str, Any]) -> GenerateMessage:
    """`xrq.generate_batch(job_id, study_ids, deployment=...)`."""
    values = _bind("xrq.generate_batch", ("job_id", "study_ids"), args, kwargs)
    job_id = _id("job_id", values.get("job_id", _MISSING))
    ids = values.get("study_ids", _MISSING)
    if not isinstance(ids, list):
        raise _invalid("study_ids", ids, "is not a list of study ids")
    if not 1 <= len(ids) <= MAX_STUDIES_PER_MESSAGE:
        raise InvalidMessageError(f"study_ids holds {len(ids):,} ids; a message holds 1 to "
                                  f"{MAX_STUDIES_PER_MESSAGE:,} (what `xrq submit` sends at most)")
    study_ids = [_id("study_ids[]", i) for i in ids]
    if len(set(study_ids)) != len(study_ids):
        raise InvalidMessageError("study_ids names a study more than once")
    return GenerateMessage(job_id, study_ids, _deployment(values))


def parse_evaluate(args: Sequence[Any], kwargs: Mapping[str, Any]) -> EvaluateMessage:
    """`xrq.evaluate(job_id= | model= | baseline=, split=, text=, collection=, with_meteor=, deployment=)`."""
    values = _bind("xrq.evaluate", (), args, kwargs, optional=("job_id", "model", "baseline", "split", "text",
                                                             "collection", "with_meteor"))
    options: dict[str, Any] = {}
    if "job_id" in values:
        options["job_id"] = _id("job_id", values["job_id"])
    for key in ("model", "collection"):
        if key in values:
            options[key] = _name(key, values[key])
    for key, choices in (("baseline", BASELINES), ("split", SPLITS), ("text", TEXTS)):
        if key in values:
            options[key] = _choice(key, values[key], choices)
    if "with_meteor" in values:
        options["with_meteor"] = _bool("with_meteor", values["with_meteor"])
    sources = [k for k in ("job_id", "model", "baseline") if k in options]
    if len(sources) != 1:
        raise InvalidMessageError(f"an evaluation names exactly one of job_id, model, baseline; this one names "
                                  f"{', '.join(sources) or 'none'}")
    return EvaluateMessage(options, _deployment(values))


def parse_backlog(args: Sequence[Any], kwargs: Mapping[str, Any]) -> BacklogMessage:
    """`xrq.backlog(deployment=...)`: nothing else."""
    return BacklogMessage(_deployment(_bind("xrq.backlog", (), args, kwargs)))


# --- the checks ----------------------------------------------------------------------------------------

_MISSING = object()


def _bind(task: str, positional: tuple[str, ...], args: Sequence[Any], kwargs: Mapping[str, Any],
          optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The message's arguments by name; refuses extra positions, unknown or repeated names."""
    if not isinstance(args, list | tuple) or not isinstance(kwargs, Mapping):
        raise InvalidMessageError(f"{task} takes a list of arguments and a map of keywords")
    if len(args) > len(positional):
        raise InvalidMessageError(f"{task} takes {len(positional)} positional argument(s), the message has "
                                  f"{len(args)}")
    values = dict(zip(positional, args, strict=False))
    known = (*positional, *optional, DEPLOYMENT_KEY)
    for key, value in kwargs.items():
        if key not in known:
            raise InvalidMessageError(f"{task} takes no argument {_show(key)} (it takes {', '.join(known)})")
        if key in values:
            raise InvalidMessageError(f"{task} got {key} twice")
        values[key] = value
    missing = [k for k in positional if k not in values]
    if missing:
        raise InvalidMessageError(f"{task} needs {', '.join(missing)}")
    return values


def _id(name: str, value: Any) -> int:
    if type(value) is not int:  # bool is an int in Python; 1.5 and "2" are not ids
        raise _invalid(name, value, "is not an integer id")
    if not 1 <= value <= MAX_ID:
        raise _invalid(name, value, f"is out of range (1 to {MAX_ID})")
    return value


def _bool(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise _invalid(name, value, "is not true or false")
    return value


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _invalid(name, value, f"is not one of {', '.join(choices)}")
    return value


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _invalid(name, value, "is not a name (letters, digits and ._:@+- only, at most 200)")
    return value


def _deployment(values: Mapping[str, Any]) -> str | None:
    """The deployment the message belongs to; None from a sender older than the deployment id."""
    value = values.get(DEPLOYMENT_KEY)
    if value is not None and not (isinstance(value, str) and _DEPLOYMENT.fullmatch(value)):
        raise _invalid(DEPLOYMENT_KEY, value, "is not a deployment id (32 hex digits)")
    return value


def _invalid(name: str, value: Any, why: str) -> InvalidMessageError:
    return InvalidMessageError(f"{name} {_show(value)} {why}")


def _show(value: Any) -> str:
    """A value as it may be logged: one line, cut short (a forged message may carry anything)."""
    text = ascii(value)  # control characters and all non-ASCII escaped
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
