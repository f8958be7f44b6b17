"""Load run of the distributed path: N distinct studies, W Celery workers, real Redis and PostgreSQL.

    python -m bench.load [--studies 2000] [--workers 2] [--batch-size 8] [--preset tiny]

Makes N distinct PNGs (copies of examples/iu, each with one pixel changed; kept in --images, default
a temp folder, and reused when they are already there), a fresh PostgreSQL database, a key prefix of
its own on the Redis at --redis, and W `xrq worker` subprocesses (one process each). Then it submits
the folder as `xrq submit` does and follows the job in the database until it is finished.

Prints JSON: studies per second (submit to last report), the median and 95th percentile of the time
from submit to report (reports.created_at - jobs.created_at), and whether every study of the job has
exactly one report.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

from sqlalchemy import text  # noqa: E402

from testing.services import distinct_copies, workers  # noqa: E402
from worker import runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402

ADMIN_URL = os.environ.get("XRQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def make_images(folder: Path, count: int, jobs: int) -> None:
    """Write the missing copies, in parallel (PNG encoding is the slow part)."""
    have = len(list(folder.glob("copy*.png"))) if folder.is_dir() else 0
    if have >= count:
        return
    sources = sorted((REPO / "examples" / "iu").glob("*.png"))
    step = max(1, (count - have) // (jobs * 4))
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(distinct_copies, sources, folder, min(step, count - start), start=start)
                   for start in range(have, count, step)]
        for f in futures:
            f.result()


def measure(db_url: str, job_id: int) -> dict[str, float | int | bool]:
    with runtime.database(db_url).engine.connect() as conn:
        row = conn.execute(text("""
            SELECT count(*) AS reports, count(DISTINCT r.study_id) AS studies,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.created_at - j.created_at)),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.created_at - j.created_at)),
                   extract(epoch FROM max(r.created_at) - min(j.created_at))
            FROM reports r JOIN jobs j ON j.id = r.job_id WHERE j.id = :job"""), {"job": job_id}).one()
        in_job = conn.execute(text("SELECT count(*) FROM job_studies WHERE job_id = :job"), {"job": job_id}).scalar()
        per_study = conn.execute(text("""
            SELECT count(*) FROM job_studies js
            WHERE js.job_id = :job AND (SELECT count(*) FROM reports r WHERE r.study_id = js.study_id) <> 1"""),
            {"job": job_id}).scalar()
    reports, studies, median, p95, span = row
    return {"studies": int(in_job or 0), "reports": int(reports), "span_s": float(span),
            "median_s": round(float(median), 3), "p95_s": round(float(p95), 3),
            "exactly_once": per_study == 0 and reports == studies == in_job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=Path, help="folder for the copies (reused across runs)")
    parser.add_argument("--redis", default=os.environ.get("XRQ_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    import psycopg
    import redis

    from model.network.bundle import build
    from model.network.store import save
    from worker.follow import follow_job
    from worker.submit import submit_folder

    with tempfile.TemporaryDirectory(prefix="xrq-load-") as tmp:
        work = Path(tmp)
        images = args.images or work / "images"
        started = time.perf_counter()
        make_images(images, args.studies, os.cpu_count() or 2)
        images_s = time.perf_counter() - started
        model_dir = save(build(args.preset), work / "model")

        name = f"xrq_load_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db_url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        prefix = f"xrq-load-{uuid.uuid4().hex[:8]}:"
        env = {"XRQ_DATABASE_URL": db_url, "XRQ_BROKER_URL": args.redis, "XRQ_BROKER_PREFIX": prefix}
        os.environ.update(env)
        try:
            with workers(work, env, args.workers):
                settings = Settings(database_url=db_url, broker_url=args.redis, model=str(model_dir),
                                    batch_size=args.batch_size)
                t0 = time.perf_counter()
                submission = submit_folder(settings, images)
                submit_s = time.perf_counter() - t0
                summary = follow_job(runtime.database(db_url), submission.job_id, interval=1.0)
                wall_s = time.perf_counter() - t0
                result = measure(db_url, submission.job_id)
        finally:
            runtime.clear()
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            client = redis.Redis.from_url(args.redis)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
    print(json.dumps({
        "bench": "load", "preset": args.preset, "workers": args.workers, "batch_size": args.batch_size,
        "studies": result["studies"], "counts": summary.counts,
        "studies_per_s": round(int(result["studies"]) / float(result["span_s"]), 2),
        "submit_to_report_median_s": result["median_s"], "submit_to_report_p95_s": result["p95_s"],
        "job_span_s": round(float(result["span_s"]), 2), "wall_s": round(wall_s, 2),
        "submit_call_s": round(submit_s, 2), "make_images_s": round(images_s, 2),
        "every_study_reported_exactly_once": result["exactly_once"],
    }))


if __name__ == "__main__":
    main()
