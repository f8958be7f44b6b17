"""`xrq submit` without the CLI: scan a folder, record the job, run it here or hand it to the broker.

This module moves data between model/ (scanning, the model) and db/ (jobs): neither knows the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from db import jobs
from db.engine import Database
from db.queries import JobSummary, job_summary
from model.generate import check_fits
from model.scan import ScannedStudy, scan_folder
from worker import runtime
from worker.errors import NoModelError
from worker.pipeline import Timings, run_batches
from worker.settings import Settings


@dataclass(frozen=True)
class Submission:
    job_id: int
    created: bool  # False: this content was submitted before with this model
    ran: int  # studies processed by this call (0 when queued on a broker)
    summary: JobSummary
    timings: Timings
    scanned: int  # files found in the folder


def to_study_in(study: ScannedStudy) -> jobs.StudyIn:
    return jobs.StudyIn(
        fingerprint=study.fingerprint, uid=study.uid, grouping=study.grouping, error=study.error,
        images=[jobs.ImageIn(str(im.path), im.relpath, im.sha256, im.size_bytes, im.error)
                for im in study.images],
    )


def submit_folder(
    settings: Settings, folder: str | Path, *, group_by: str = "auto", pattern: str | None = None,
    progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
) -> Submission:
    """Record a job for the folder's studies and, with no broker configured, process it in-process.

    `on_start(n)` is called with the number of studies about to be processed (for a progress bar),
    `progress(k)` after every batch with the number of studies it held.
    """
    if not settings.model:
        raise NoModelError("no model given: pass --model DIR or set XRQ_MODEL "
                           "(make one with `xrq model init --out models/tiny`)")
    studies = scan_folder(folder, group_by=group_by, pattern=pattern)
    db = runtime.database(settings.database_url)
    bundle = runtime.bundle(settings.model, settings.device)
    generation = runtime.generation(settings, bundle)
    check_fits(bundle, generation)  # a setting the model cannot honour fails now, not in every batch
    model_id = runtime.model_id(db, bundle)
    record = jobs.record_job(
        db, source=str(Path(folder).resolve()), model_id=model_id, group_by=group_by,
        batch_size=settings.batch_size, settings=generation.as_dict(),
        studies=[to_study_in(s) for s in studies],
    )
    timings = Timings()
    if settings.broker_url:
        from worker.enqueue import enqueue_job  # celery is imported only when a broker is configured

        enqueue_job(settings, db, record.job_id, record.to_run)
        ran = 0
    else:
        if on_start is not None:
            on_start(len(record.to_run))
        timings = run_job(settings, db, record.job_id, record.to_run, progress=progress)
        ran = len(record.to_run)
    return Submission(record.job_id, record.created, ran, job_summary(db, record.job_id), timings,
                      sum(len(s.images) for s in studies))


def run_job(settings: Settings, db: Database, job_id: int, study_ids: list[int],
            progress: Callable[[int], None] | None = None) -> Timings:
    """Process studies of a job in this process with the job's model settings."""
    bundle = runtime.bundle(settings.model or "", settings.device)
    model_id = runtime.model_id(db, bundle)
    job = jobs.get_job(db, job_id)
    return run_batches(
        db, bundle, model_id, job_id, study_ids, batch_size=job.batch_size,
        generation=runtime.job_generation(job.settings), max_pixels=settings.max_pixels,
        decode_threads=settings.decode_threads, max_attempts=settings.max_attempts, progress=progress,
    )
