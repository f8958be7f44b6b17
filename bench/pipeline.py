"""Files on disk to report rows in the database, against the decode-only bound; prints JSON.

    python -m bench.pipeline [--images 72] [--preset tiny] [--max-new-tokens 1] [--rounds 3]
                             [--via inprocess|celery] [--database-url URL] [--broker-url URL]

The bound: the same files read, checked, decoded and preprocessed on all the cores (as many decode
workers, of the pipeline's kind), and nothing else. The pipeline cannot beat it: decoding runs beside
generation, and the rest (claiming, the model, the database) is what the overlap has to hide; on a CPU
the pipeline splits the cores between decoding and the model from measured stage times
(worker/resources.Balance), and `--decode-workers 1` with OMP_NUM_THREADS=1 is the fixed half-and-half
split of 2 cores it replaced. Each
round uses new files (distinct copies of the real IU X-rays, one changed pixel each, so every one is a
new study) and alternates bound and pipeline, so the shared machine's noise hits both alike.

`--via inprocess` runs the recorded job through `LocalRunner` (the pipeline `xrq submit` runs);
`--via celery` submits to a real broker and one `xrq worker` process (set XRQ_DATABASE_URL /
--database-url to PostgreSQL for the production path) and times until the last study is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent

from db import jobs  # noqa: E402
from model.network.bundle import build  # noqa: E402
from model.network.store import save  # noqa: E402
from worker import runtime  # noqa: E402
from worker.pipeline import Limits  # noqa: E402
from worker.resources import core_share, host_cores, plan_threads  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.submit import submit_folder  # noqa: E402

EXAMPLES = REPO / "examples" / "iu"


def copies(out: Path, count: int, start: int) -> list[Path]:
    from testing.services import distinct_copies

    return distinct_copies(sorted(EXAMPLES.glob("*.png")), out, count, start=start)


def decode_only(paths: list[Path], bundle: object, workers: int, max_pixels: int, processes: bool) -> float:
    """Seconds to read, check, decode and preprocess every file on all of this process's cores
    (`workers` decode workers, of the pipeline's kind) and nothing else: the bound."""

    refs = [(jobs.ImageRef(i, str(p), p.name, hashlib.sha256(p.read_bytes()).hexdigest()), str(p.parent))
            for i, p in enumerate(paths)]
    limits = Limits(max_pixels=max_pixels, decode_workers=workers, processes=processes)
    pool = runtime.decode_pool(bundle, limits)  # type: ignore[arg-type]  # kept: started once
    list(pool.map(refs[:workers]))  # started and warm before timing, as the pipeline's are
    start = time.perf_counter()
    results = list(pool.map(refs))
    elapsed = time.perf_counter() - start
    assert all(isinstance(r, tuple) for r in results), "a bench image failed to decode"
    return elapsed


def pipeline_inprocess(settings: Settings, folder: Path) -> tuple[float, float]:
    """(seconds for the pipeline alone, seconds for the whole submit: scan, hash, record, pipeline)."""
    from worker.runner import LocalRunner

    runner = LocalRunner(settings)
    timed: dict[str, float] = {}

    class Timed:
        local = True

        def run(self, job_id: int, study_ids: list[int], progress: object = None) -> object:
            start = time.perf_counter()
            result = runner.run(job_id, study_ids)
            timed["pipeline"] = time.perf_counter() - start
            return result

    start = time.perf_counter()
    result = submit_folder(settings, folder, runner=Timed())  # type: ignore[arg-type]
    total = time.perf_counter() - start
    assert result.summary.counts == {"done": result.summary.total}, result.summary.counts
    return timed["pipeline"], total


def pipeline_celery(settings: Settings, folder: Path) -> tuple[float, float]:
    from testing.services import wait_for
    from worker.dispatch import runner_for

    db = runtime.database(settings.database_url)
    start = time.perf_counter()
    result = submit_folder(settings, folder, runner=runner_for(settings))
    wait_for(lambda: jobs.count_by_status(db, result.job_id) == {"done": result.summary.total},
             timeout=3600, what="the worker to finish", interval=0.02)
    total = time.perf_counter() - start
    return total, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=72, help="new images per round (one study each)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", help="a model directory instead of a fresh --preset one")
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-workers", type=int, help="instead of the plan from the cores")
    parser.add_argument("--via", choices=["inprocess", "celery"], default="inprocess")
    parser.add_argument("--database-url")
    parser.add_argument("--broker-url", default=os.environ.get("XRQ_BROKER_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = Path(args.model) if args.model else save(build(args.preset), tmp / "model")
        settings = Settings(database_url=args.database_url or f"sqlite:///{tmp}/bench.db", model=str(model_dir),
                            batch_size=None if args.batch_size == "auto" else int(args.batch_size),
                            max_new_tokens=args.max_new_tokens, device=args.device, decode_workers=args.decode_workers,
                            broker_url=args.broker_url if args.via == "celery" else None)
        bundle = runtime.bundle(str(model_dir), args.device)  # loaded once, outside the timings
        plan = plan_threads(bundle.device.type, decode_workers=args.decode_workers)
        worker = _start_worker(settings, tmp) if args.via == "celery" else None
        try:
            # Warm-up: the first batch pays for model loading in the worker and lazy imports here.
            warm = tmp / "warm"
            copies(warm, 2, start=10_000)
            run = pipeline_celery if args.via == "celery" else pipeline_inprocess
            run(settings, warm)
            rounds = []
            for r in range(args.rounds):
                folder = tmp / f"round{r}"
                paths = copies(folder, args.images, start=r * args.images)
                bound = decode_only(paths, bundle, core_share(), settings.max_pixels, plan.decode_workers > 1)
                piped, submitted = run(settings, folder)
                rounds.append({"bound_s": bound, "pipeline_s": piped, "submit_s": submitted})
        finally:
            if worker is not None:
                worker.stop()

    n = args.images
    bound = statistics.median(n / r["bound_s"] for r in rounds)
    piped = statistics.median(n / r["pipeline_s"] for r in rounds)
    submitted = statistics.median(n / r["submit_s"] for r in rounds)
    print(json.dumps({
        "bench": "pipeline", "via": args.via, "preset": args.preset if not args.model else args.model,
        "device": args.device, "cores": host_cores(), "decode_workers": plan.decode_workers,
        "torch_threads": plan.torch_threads, "images_per_round": n, "max_new_tokens": args.max_new_tokens,
        "decode_only_images_per_s": round(bound, 2),
        "pipeline_images_per_s": round(piped, 2),
        "pipeline_fraction_of_bound": round(piped / bound, 3),
        "submit_images_per_s": round(submitted, 2),
        "submit_fraction_of_bound": round(submitted / bound, 3),
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "note": "pipeline: the recorded job through the runner (celery: submit to last study done); "
                "submit adds scanning, hashing and recording the job",
    }, indent=2))


def _start_worker(settings: Settings, tmp: Path) -> object:
    from testing.services import WorkerProcess

    env = {"XRQ_DATABASE_URL": settings.database_url, "XRQ_BROKER_URL": str(settings.broker_url),
           "XRQ_BROKER_PREFIX": f"xrq-bench-{os.getpid()}:", "XRQ_DEVICE": settings.device}
    os.environ.update(env)
    runtime.database(settings.database_url)  # migrate before the worker starts
    worker = WorkerProcess(tmp / "worker.log", env, "--hostname", f"bench-{os.getpid()}@%h")
    worker.wait_ready()
    return worker


if __name__ == "__main__":
    main()
