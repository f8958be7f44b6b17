"""Throughput of `xrq submit` in-process on the bundled example folder; prints JSON.

    python bench/submit.py [--preset tiny] [--folder examples/iu] [--batch-size 8] [--repeat 3]

Each repeat uses a fresh SQLite database, so every study is really processed. Reported: studies per
second (wall clock, the pipelined runner), and where the time goes: decoding, the model, the database,
each measured on its own (sums over batches; decoding overlaps the model in the real run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.bundle import build, save
from worker import runtime
from worker.settings import Settings
from worker.submit import submit_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parent.parent / "examples" / "iu"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save(build(args.preset), model_dir)
        for i in range(args.repeat):
            settings = Settings(database_url=f"sqlite:///{tmp}/bench{i}.db", model=str(model_dir),
                                batch_size=args.batch_size)
            start = time.perf_counter()
            result = submit_folder(settings, args.folder)
            elapsed = time.perf_counter() - start
            t = result.timings
            busy = t.decode + t.model + t.db
            runs.append({"elapsed_s": elapsed, "studies": result.ran, "decode_s": t.decode, "model_s": t.model,
                         "db_s": t.db, "share": {"decode": t.decode / busy, "model": t.model / busy,
                                                 "db": t.db / busy}})
            runtime.clear()
    best = min(runs, key=lambda r: r["elapsed_s"])
    print(json.dumps({
        "bench": "submit", "preset": args.preset, "batch_size": args.batch_size, "folder": args.folder,
        "studies": best["studies"], "studies_per_s": round(best["studies"] / best["elapsed_s"], 3),
        "median_elapsed_s": round(statistics.median(r["elapsed_s"] for r in runs), 3),
        "share_of_busy_time": {k: round(v, 3) for k, v in best["share"].items()},
        "seconds": {k: round(best[k], 3) for k in ("decode_s", "model_s", "db_s")},
        "note": "the first run includes model load and database creation",
    }, indent=2))


if __name__ == "__main__":
    main()
