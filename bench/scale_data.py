"""Generated studies, images, jobs and reports for bench/scale.py and the scale tests, loaded in bulk.

`fill(db, n)` loads `n` studies with two images each into an empty xrq database through the database
layer's bulk path (`db.bulk.bulk_insert`: COPY on PostgreSQL, executemany on SQLite), as a year of
work would leave them:

- model `base` in jobs of JOB_SIZE studies: 96% reported, 2% failed (half of them for a transient
  reason), 1% pending, 1% queued long ago (stuck); reports spread over the last 365 days, newest last;
- model `small` reporting 1% of the same studies in one more job (what `--model small` finds);
- ground truth (collection `scale`, split test) for the first TRUTH studies.

Reports are three to six sentences of radiology prose from a fixed list (about 300 characters), about
0.5% of them mention a pneumothorax (what `--text pneumothorax` finds). Everything is seeded, and rows
are generated as they are written, never held in memory.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from db.bulk import bulk_insert, reset_sequence
from db.engine import Database
from db.schema import Image, Job, JobStudy, Model, Report, Study, Truth

JOB_SIZE = 50_000
TRUTH = 1_000
NOW = datetime(2026, 12, 1, tzinfo=UTC)
RARE = "small right apical pneumothorax."
SENTENCES = (
    "the heart is normal in size.", "the mediastinum is unremarkable.", "the lungs are clear.",
    "no pleural effusion.", "there is no focal airspace consolidation.",
    "heart size and pulmonary vascularity appear within normal limits.", "no acute cardiopulmonary abnormality.",
    "stable cardiomegaly.", "mild degenerative changes of the thoracic spine.",
    "calcified granuloma in the left upper lobe.",
    "low lung volumes with bibasilar atelectasis.", "small left pleural effusion.", "right lower lobe opacity.",
    "the cardiomediastinal silhouette is within normal limits.", "no evidence of free air under the diaphragm.",
    "there is hyperexpansion of the lungs consistent with copd.", "median sternotomy wires are intact.",
    "a dual lead pacemaker is in place.", "patchy opacity in the lingula may represent atelectasis.",
    "the osseous structures are intact.", "there is a tortuous thoracic aorta.", "interstitial markings are prominent.",
    "no suspicious pulmonary nodules.", "blunting of the right costophrenic angle.", "the trachea is midline.",
)


@dataclass(frozen=True)
class Filled:
    studies: int
    reports: int
    jobs: list[int]  # job ids, the `small` model's last
    small_job: int
    seconds: float


def report_text(rng: random.Random) -> str:
    sentences = rng.sample(SENTENCES, rng.randint(3, 6))
    if rng.random() < 0.005:
        sentences.insert(rng.randrange(len(sentences) + 1), RARE)
    return " ".join(sentences)


def _hex(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def _status(i: int) -> str:
    r = i % 100
    return "failed" if r < 2 else "pending" if r == 2 else "queued" if r == 3 else "done"


def _made(i: int, n: int) -> datetime:
    """Study i's report time: the last 365 days, in study order."""
    return NOW - timedelta(seconds=(n - i) * 365 * 86400 / max(n, 1))


def fill(db: Database, n: int, *, seed: int = 0, job_size: int = JOB_SIZE) -> Filled:
    """Load `n` generated studies (see the module's docstring) into `db`, which has no jobs yet, in jobs of
    `job_size` studies."""
    import time

    started = time.perf_counter()
    t = {cls: cls.__table__ for cls in (Model, Job, Study, Image, JobStudy, Report, Truth)}
    bulk_insert(db, t[Model], ["id", "name", "fingerprint", "path", "meta", "created_at"],
                [(1, "base", _hex("model", 1), "/models/base", {}, NOW - timedelta(days=400)),
                 (2, "small", _hex("model", 2), "/models/small", {}, NOW - timedelta(days=400))])
    n_jobs = max(1, -(-n // job_size))
    small_job = n_jobs + 1
    settings = {"num_beams": 1, "max_new_tokens": 128}
    bulk_insert(db, t[Job], ["id", "fingerprint", "source", "model_id", "group_by", "batch_size", "settings",
                             "created_at"],
                [(j, _hex("job", j), f"/archive/batch{j:04d}", 1 if j < small_job else 2, "auto", 32, settings,
                  _made((j - 1) * job_size if j < small_job else 0, n)) for j in range(1, small_job + 1)])
    bulk_insert(db, t[Study], ["id", "fingerprint", "uid", "grouping", "created_at"],
                ((i, _hex("study", i), f"S{i:08d}", "dicom", _made(i, n)) for i in range(1, n + 1)))
    bulk_insert(db, t[Image], ["id", "job_id", "study_id", "path", "relpath", "sha256", "size_bytes", "width",
                               "height", "error"], _images(n, job_size))
    small = range(1, n + 1, 100)  # 1% of the studies, reported by `small` too
    bulk_insert(db, t[JobStudy], ["job_id", "study_id", "status", "error", "attempts", "retryable", "updated_at"],
                _job_studies(n, small, small_job, job_size))
    bulk_insert(db, t[Report], ["id", "study_id", "model_id", "job_id", "text", "settings", "created_at"],
                _reports(n, small, small_job, seed, job_size))
    bulk_insert(db, t[Truth], ["id", "collection", "uid", "findings", "impression", "mesh", "indication",
                               "comparison", "split", "created_at"],
                ((i, "scale", f"S{i:08d}", report_text(random.Random(-i)), "", "normal", "", "", "test", NOW)
                 for i in range(1, min(n, TRUTH) + 1)))
    for cls in (Model, Job, Study, Image, Report, Truth):
        reset_sequence(db, t[cls])
    reports = sum(1 for i in range(1, n + 1) if _status(i) == "done") + len(small)
    return Filled(n, reports, list(range(1, small_job + 1)), small_job, time.perf_counter() - started)


def _job_of(i: int, job_size: int) -> int:
    return (i - 1) // job_size + 1


def _images(n: int, job_size: int) -> Iterator[tuple[object, ...]]:
    for i in range(1, n + 1):
        job = _job_of(i, job_size)
        for k in (1, 2):
            rel = f"S{i:08d}/IM-0001-{k:04d}.dcm"
            yield (2 * i - 2 + k, job, i, f"/archive/batch{job:04d}/{rel}", rel, _hex("image", i, k),
                   1_400_000 + i % 9973, 2048, 2500, None)


def _job_studies(n: int, small: range, small_job: int, job_size: int) -> Iterator[tuple[object, ...]]:
    long_ago = NOW - timedelta(days=2)
    for i in range(1, n + 1):
        status = _status(i)
        error = None
        if status == "failed":
            error = (f"S{i:08d}/IM-0001-0001.dcm: cannot read the file (I/O error)" if i % 200 == 0
                     else f"S{i:08d}/IM-0001-0001.dcm: not a DICOM or image file")
        yield (_job_of(i, job_size), i, status, error, 1 if status in ("done", "failed") else 0,
               status == "failed" and i % 200 == 0, long_ago if status in ("pending", "queued") else _made(i, n))
    for i in small:
        yield (small_job, i, "done", None, 1, False, _made(i, n))


def _reports(n: int, small: range, small_job: int, seed: int, job_size: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(seed)
    settings = {"num_beams": 1, "max_new_tokens": 128, "search": "greedy"}
    report_id = 0
    for i in range(1, n + 1):
        if _status(i) == "done":
            report_id += 1
            yield (report_id, i, 1, _job_of(i, job_size), report_text(rng), settings, _made(i, n))
    for i in small:
        report_id += 1
        yield (report_id, i, 2, small_job, report_text(rng), settings, _made(i, n))
