"""Throughput of `xrq submit` in-process on the bundled example folder; prints JSON.

    python -m bench.submit [--preset tiny] [--folder examples/iu] [--batch-size auto] [--repeat 3]
    python -m bench.submit --against /path/to/an/older/checkout [--rounds 5]

With `--against`, this tree's bench and the other checkout's own bench/submit.py run as alternating
subprocesses (same python, each importing its own tree), and the ratio of their studies/s is printed:
the before/after of a change, measured in one run on a noisy machine.

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model.network.bundle import build
from model.network.store import save
from worker import runtime
from worker.settings import Settings
from worker.submit import submit_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parent.parent / "examples" / "iu"))
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", metavar="CHECKOUT", help="compare with another checkout's bench/submit.py")
    parser.add_argument("--rounds", type=int, default=5, help="with --against: alternating runs of each")
    args = parser.parse_args()
    if args.against:
        compare(args)
        return

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        save(build(args.preset), model_dir)
        for i in range(args.repeat):
            settings = Settings(database_url=f"sqlite:///{tmp}/bench{i}.db", model=str(model_dir),
                                batch_size=None if args.batch_size == "auto" else int(args.batch_size))
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


def compare(args: argparse.Namespace) -> None:
    """Alternate this tree's bench and the other checkout's, in fresh processes; print both and the ratio."""
    import subprocess

    here = Path(__file__).resolve().parent.parent
    other = Path(args.against).resolve()
    common = ["--preset", args.preset, "--folder", args.folder, "--repeat", str(args.repeat)]
    runs: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(args.rounds):
        for name, tree, extra in (("other", other, []), ("this", here, ["--batch-size", args.batch_size])):
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(tree)}
            out = subprocess.run([sys.executable, "-m", "bench.submit", *common, *extra], capture_output=True,
                                 text=True, check=True, cwd=tree, env=env)
            runs[name].append(json.loads(out.stdout)["studies_per_s"])
    this, before = statistics.median(runs["this"]), statistics.median(runs["other"])
    print(json.dumps({"bench": "submit-compare", "preset": args.preset, "against": str(other),
                      "studies_per_s": {"this": runs["this"], "other": runs["other"]},
                      "median_this": this, "median_other": before, "ratio": round(this / before, 3)}, indent=2))


if __name__ == "__main__":
    main()
