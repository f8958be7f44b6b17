"""`xrq submit` without the CLI: scan a folder, record the job, hand it to a runner.

This module moves data between model/ (scanning, the model) and db/ (jobs): neither knows the other.
The runner (this process's pipeline, or the broker's workers) is the caller's choice
(`worker.dispatch.runner_for`); without one and without a broker, the work runs here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import jobs
from db.queries import JobSummary, job_summary
from model.defaults import decoder_positions
from model.imaging.files import name_to_text
from model.imaging.scan import ScannedStudy, scan_folder
from model.network.meta import SavedModel, describe
from worker import runtime
from worker.errors import NoModelError, SettingsError
from worker.pipeline import RunResult, Timings
from worker.runner import LocalRunner, Runner
from worker.settings import Settings

if TYPE_CHECKING:
    from model.network.bundle import Bundle


@dataclass(frozen=True)
class SubmitHooks:
    """What a caller (the CLI's progress bars) hears while a submission runs; any may be None."""

    stage: Callable[[str], None] | None = None  # "loading the model", "scanning", "recording the job"
    scanned: Callable[[int], None] | None = None  # n more files hashed
    start: Callable[[int], None] | None = None  # the number of studies about to be processed here
    progress: Callable[[int], None] | None = None  # n more studies processed (after each batch)


@dataclass(frozen=True)
class Submission:
    job_id: int
    created: bool  # False: this content was submitted before with this model
    ran: int  # studies processed by this call (0 when queued on a broker)
    summary: JobSummary
    timings: Timings
    scanned: int  # files found in the folder
    result: RunResult | None = None  # what the run did, batch by batch (None: nothing to do)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # a resubmit's new settings: (before, now)
    retried: int = 0  # transient failures opened again by this submission
    local: bool = True  # the work ran in this process (False: handed to the broker's workers)
    ignored: tuple[str, ...] = ()  # files left out as plainly not pictures (notes.txt), escaped relpaths

    @property
    def unfinished(self) -> str | None:
        """Why an in-process run left work undone (studies still open, or batches that broke), else None.

        A broker's job is unfinished by design (its workers do the rest); a local one must not look done.
        """
        if not self.local:
            return None
        errors = self.result.errors if self.result is not None else []
        if not errors and not self.summary.waiting:
            return None
        reasons = sorted({f"{e.stage}: {e.reason}" for e in errors}) or ["they were not processed"]
        open_now = self.summary.waiting
        counted = f"{open_now} studies are still open" if open_now else \
            f"{sum(len(e.study_ids) for e in errors)} studies failed for a reason that may pass"
        return (f"job {self.job_id} is not finished: {counted} ({'; '.join(reasons)}). Fix that, then run "
                "the same `xrq submit` again (or `xrq backlog`) to finish them")


def to_study_in(study: ScannedStudy) -> jobs.StudyIn:
    """A scanned study as the database takes it: names that are not UTF-8 stored escaped, losslessly
    (model.imaging.files.name_to_text; workers turn them back into the file's name to open it)."""
    text = name_to_text
    return jobs.StudyIn(
        fingerprint=study.fingerprint, uid=text(study.uid), grouping=study.grouping,
        error=text(study.error) if study.error else None,
        images=[jobs.ImageIn(text(str(im.path)), text(im.relpath), im.sha256, im.size_bytes,
                             text(im.error) if im.error else None) for im in study.images],
    )


def submit_folder(
    settings: Settings, folder: str | Path, *, group_by: str = "auto", pattern: str | None = None,
    hooks: SubmitHooks = SubmitHooks(), runner: Runner | None = None,
) -> Submission:
    """Record a job for the folder's studies and hand what is left to do to `runner` (see SubmitHooks)."""
    if not settings.model:
        raise NoModelError("no model given: pass --model DIR or set XRQ_MODEL "
                           "(make one with `xrq model init --out models/tiny`)")
    if runner is None:
        if settings.broker_url:
            raise SettingsError("a broker is configured: pass runner=worker.dispatch.runner_for(settings)")
        runner = LocalRunner(settings)
    def stage(name: str) -> None:
        if hooks.stage is not None:
            hooks.stage(name)

    db = runtime.database(settings.database_url)
    stage("loading the model")
    model = _model_for(settings, local=runner.local)
    generation = runtime.generation(settings, model)
    positions = model.positions if isinstance(model, SavedModel) else decoder_positions(model.model.config.decoder)
    generation.check_fits(positions, settings.batch_size)  # what the model cannot honour fails now, before any work
    stage("scanning and hashing")
    ignored: list[str] = []
    studies = scan_folder(folder, group_by=group_by, pattern=pattern, max_file_bytes=settings.max_file_bytes,
                          progress=hooks.scanned, ignored=lambda rel: ignored.append(name_to_text(rel)))
    stage("recording the job")
    model_id = runtime.model_id(db, model)
    record = jobs.record_job(
        db, source=name_to_text(str(Path(folder).resolve())), model_id=model_id, group_by=group_by,
        batch_size=settings.batch_size or 0, settings=generation.as_dict(),  # 0: auto, chosen where it runs
        studies=[to_study_in(s) for s in studies],
    )
    if runner.local and hooks.start is not None:
        hooks.start(len(record.to_run))
    stage("reporting" if runner.local else "queueing")
    result = runner.run(record.job_id, record.to_run, progress=hooks.progress) if record.to_run else None
    ran = len(record.to_run) if runner.local else 0
    return Submission(record.job_id, record.created, ran, job_summary(db, record.job_id),
                      result.timings if result else Timings(), sum(len(s.images) for s in studies), result,
                      record.changed, record.retried, local=runner.local, ignored=tuple(ignored))


def _model_for(settings: Settings, *, local: bool) -> Bundle | SavedModel:
    """The model to record the job under. Reporting here: loaded. Through a broker: only read, by the
    fingerprint it recorded when saved (the workers load the weights, and refuse any that do not match);
    a model saved without one (not by xrq) is loaded to fingerprint it."""
    assert settings.model
    if not local:
        saved = describe(settings.model)
        if saved.fingerprint is not None:
            return saved
    return runtime.bundle(settings.model, settings.device)
