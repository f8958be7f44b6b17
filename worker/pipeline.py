"""The task bodies: take a batch of study ids, decode, generate, store. Shared by every way of running.

A batch goes through two phases:
- `prepare`: claim the studies in the database, decode and resize their images into tensors
  (threads: Pillow, zlib and pydicom release the GIL), turning unreadable images into failed studies;
- `finish`: one batched `generate` for the readable studies, then one transaction for the results.

In-process (`run_batches`) the next batch is prepared while the current one is generated, so the
model never waits for the disk. A Celery task calls `process_batch`, which runs both phases.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from db import jobs
from db.engine import Database
from model.errors import ImageError
from model.images import decode_bytes, read_submitted

if TYPE_CHECKING:
    import torch
    from transformers import ViTImageProcessorPil

    from model.bundle import Bundle
    from model.generate import GenerationSettings


log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Seconds spent per phase, summed over batches: where the time of a job goes."""

    decode: float = 0.0
    model: float = 0.0
    db: float = 0.0
    studies: int = 0

    def add(self, other: Timings) -> None:
        self.decode += other.decode
        self.model += other.model
        self.db += other.db
        self.studies += other.studies

    def as_dict(self) -> dict[str, float]:
        return {"decode_s": round(self.decode, 4), "model_s": round(self.model, 4),
                "db_s": round(self.db, 4), "studies": self.studies}


@dataclass
class Prepared:
    job_id: int
    items: list[jobs.WorkItem]
    views: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # study id -> (3, H, W) per view
    outcome: jobs.BatchOutcome = field(default_factory=jobs.BatchOutcome)
    timings: Timings = field(default_factory=Timings)


def _load_view(ref: jobs.ImageRef, root: str, processor: ViTImageProcessorPil,
               max_pixels: int) -> tuple[tuple[int, int], torch.Tensor] | ImageError:
    """Read (inside the submitted folder, with the submitted content), decode and preprocess one image:
    its (width, height) and model input, or why it can't be used."""
    from model.preprocess import view_tensor

    try:
        data = read_submitted(ref.path, root=root, sha256=ref.sha256)
        image = decode_bytes(data, max_pixels=max_pixels, name=os.path.basename(ref.path))
    except ImageError as exc:
        return exc
    return image.size, view_tensor(processor, image)


def prepare(db: Database, job_id: int, study_ids: Sequence[int], *, processor: ViTImageProcessorPil,
            max_pixels: int, pool: ThreadPoolExecutor, max_attempts: int | None = None) -> Prepared:
    """Claim the batch and load its images; a study with any unreadable image fails with the reason."""
    t0 = time.perf_counter()
    items = jobs.claim_batch(db, job_id, study_ids, max_attempts=max_attempts)
    prepared = Prepared(job_id, items)
    t1 = time.perf_counter()
    refs = [ref for item in items for ref in item.images]
    roots = {ref.id: item.root for item in items for ref in item.images}
    loaded = pool.map(lambda r: _load_view(r, roots[r.id], processor, max_pixels), refs)
    decoded = dict(zip((r.id for r in refs), loaded, strict=True))
    for item in items:
        errors = [(ref, decoded[ref.id]) for ref in item.images if isinstance(decoded[ref.id], ImageError)]
        for ref, err in errors:
            prepared.outcome.image_errors[ref.id] = str(err)
        if not item.images:
            prepared.outcome.failures[item.study_id] = "study has no images"
        elif errors:
            ref, err = errors[0]
            prepared.outcome.failures[item.study_id] = f"{ref.relpath}: {err}"
            if all(e.transient for _, e in errors):  # type: ignore[union-attr]
                prepared.outcome.retryable.add(item.study_id)
        else:
            views = [decoded[ref.id] for ref in item.images]
            prepared.views[item.study_id] = [tensor for _, tensor in views]  # type: ignore[misc]
            for ref, (size, _) in zip(item.images, views, strict=True):  # type: ignore[misc]
                prepared.outcome.image_sizes[ref.id] = size
    t2 = time.perf_counter()
    prepared.timings = Timings(decode=t2 - t1, db=t1 - t0, studies=len(items))
    return prepared


def finish(db: Database, bundle: Bundle, model_id: int, prepared: Prepared,
           generation: GenerationSettings) -> Prepared:
    """Generate the reports of the readable studies in one batch and store everything in one transaction."""
    from model.generate import generate_from_pixels, record
    from model.preprocess import stack_views

    t0 = time.perf_counter()
    study_ids = list(prepared.views)
    if study_ids:
        pixels, mask = stack_views([prepared.views[sid] for sid in study_ids], bundle.max_views)
        texts = generate_from_pixels(bundle, pixels, mask, generation)
        prepared.outcome.reports.update(zip(study_ids, texts, strict=True))
    t1 = time.perf_counter()
    settings = {**record(generation, bundle.device), "model": bundle.name,
                "model_fingerprint": bundle.fingerprint}
    jobs.record_results(db, job_id=prepared.job_id, model_id=model_id, outcome=prepared.outcome,
                        settings=settings)
    t2 = time.perf_counter()
    prepared.timings.add(Timings(model=t1 - t0, db=t2 - t1))
    prepared.views.clear()  # free the pixels as soon as they are used
    return prepared


def process_batch(db: Database, bundle: Bundle, model_id: int, job_id: int, study_ids: Sequence[int], *,
                  generation: GenerationSettings, max_pixels: int, decode_threads: int,
                  max_attempts: int | None = None) -> Prepared:
    """One batch, start to end: what a worker task runs for each message."""
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="xrq-decode") as pool:
        prepared = prepare(db, job_id, study_ids, processor=bundle.processor, max_pixels=max_pixels, pool=pool,
                           max_attempts=max_attempts)
    return finish(db, bundle, model_id, prepared, generation)


def batches(study_ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(study_ids[i : i + size]) for i in range(0, len(study_ids), size)]


def run_batches(db: Database, bundle: Bundle, model_id: int, job_id: int, study_ids: Sequence[int], *,
                batch_size: int, generation: GenerationSettings, max_pixels: int, decode_threads: int,
                max_attempts: int | None = None, progress: Callable[[int], None] | None = None) -> Timings:
    """Process a job's studies in this process, decoding batch k+1 while batch k is generated."""
    total = Timings()
    todo = batches(study_ids, batch_size)
    if not todo:
        return total
    with ThreadPoolExecutor(decode_threads, thread_name_prefix="xrq-decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="xrq-prepare") as ahead:
        load = partial(prepare, db, job_id, processor=bundle.processor, max_pixels=max_pixels, pool=pool,
                       max_attempts=max_attempts)
        upcoming = ahead.submit(load, todo[0])
        for index in range(len(todo)):
            prepared = upcoming.result()
            if index + 1 < len(todo):
                upcoming = ahead.submit(load, todo[index + 1])
            try:
                finish(db, bundle, model_id, prepared, generation)
            except Exception as exc:
                # As a Celery worker does: the batch fails with the reason (retryable, so the backlog
                # tries again), and the job goes on, rather than leaving its studies running for ever.
                log.exception("batch of job %s failed", job_id)
                jobs.fail_open(db, job_id, todo[index], f"worker error: {type(exc).__name__}: {exc}")
            total.add(prepared.timings)
            if progress is not None:
                progress(len(todo[index]))
    return total
