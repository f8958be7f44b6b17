"""The control plane at N reports: fill PostgreSQL and a SQLite file, then time and weigh every read.

    nice python -m bench.scale --n 100000 -o bench/results/scale-100k.json
    nice python -m bench.scale --n 1000000 --full reports-jsonl export-parquet -o bench/results/scale-1m.json

For each backend (`--backends postgres sqlite`): a fresh database (PostgreSQL: a database of its own on
the server of XRQ_TEST_POSTGRES, dropped afterwards unless --keep; SQLite: a file in --workdir) filled
with N generated studies, two images each, through the bulk path (bench/scale_data.py: COPY on
PostgreSQL, executemany on SQLite), then ANALYZE, as autovacuum would. Then, each command a child
process of the CLI of this tree (bench/measure.py):

- size: the database's bytes (PostgreSQL: every xrq table with its indexes and TOAST; SQLite: the
  file) and bytes per report (with its images, job rows and study);
- first line: time to the first line of `xrq reports` in each format and with each filter, the pipe
  closed after it (`| head -1`), and how long the command took to end after that;
- full reads (--full): wall time and peak RSS of reading everything (`reports -o`, `export` of every
  job, `evaluate --model`): what stays flat as N grows;
- `xrq status`, `xrq status JOB`, `xrq backlog --dry-run`: wall time, against `xrq --version` (the
  interpreter and the CLI's start) and `xrq db current` (that and opening the database); their
  queries timed in this process too, and on PostgreSQL beside the same queries with the planner's JIT
  on and without the backlog's index (migration 0014), in the same run (the best of three each);
- plans: each filter's listing query as the database plans it (PostgreSQL: the cursor's plan, EXPLAIN
  DECLARE), the indexes it uses and whether it reads a whole table.

Prints and writes JSON. `xrq show --job` is not measured here: it draws a picture a study (seconds
each), so its memory is what one study costs whatever N (tests/cli/test_show_cli.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.measure import run_xrq
from bench.scale_data import NOW, fill

FULL = {
    "reports-jsonl": ["reports", "--format", "jsonl", "-o", "{work}/all.jsonl"],
    "reports-csv": ["reports", "--format", "csv", "-o", "{work}/all.csv"],
    "export-csv": ["export", "{jobs}", "-o", "{work}/all.csv"],
    "export-jsonl": ["export", "{jobs}", "-o", "{work}/all.jsonl"],
    "export-parquet": ["export", "{jobs}", "-o", "{work}/all.parquet"],
    "evaluate-model": ["evaluate", "--model", "base", "--no-meteor", "--json"],
}
XRQ_TABLES = ("models", "jobs", "studies", "images", "job_studies", "reports", "truth")
SMALL = {"models", "jobs"}  # a handful of rows whatever N: read whole, as they should be
PARTIAL = ("ix_job_studies_failed", "ix_job_studies_backlog")  # a partial index holds only the rows its filter wants


def filters(last_job: int) -> dict[str, list[str]]:
    """Each filter of `xrq reports`, chosen as people use them: the newest job, the smaller model, the
    last day, the failures, a rare word, the least sure reports."""
    day = (NOW - timedelta(days=1)).strftime("%Y-%m-%d")
    return {"job": ["--job", str(last_job)], "model": ["--model", "small"], "since": ["--since", day],
            "status": ["--status", "failed"], "text": ["--text", "pneumothorax"],
            "confidence": ["--order-by", "confidence", "--max-confidence", "0.02"]}


def backend_url(kind: str, n: int, workdir: Path) -> str:
    if kind == "sqlite":
        path = workdir / f"scale-{n}.db"
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    import psycopg

    admin = os.environ.get("XRQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"xrq_scale_{n}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin.rsplit('/', 1)[0]}/{name}"


def drop(url: str) -> None:
    if url.startswith("sqlite"):
        return
    import psycopg

    admin = os.environ.get("XRQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def analyze_and_size(url: str) -> dict[str, Any]:
    """ANALYZE (as autovacuum would after a load), then the bytes the database takes, by table."""
    if url.startswith("sqlite"):
        import sqlite3

        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("ANALYZE")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            tables = {}
            try:
                for name in XRQ_TABLES:
                    tables[name] = conn.execute(
                        "SELECT SUM(pgsize) FROM dbstat WHERE name = ? OR name IN "
                        "(SELECT name FROM sqlite_master WHERE tbl_name = ? AND type = 'index')", (name, name)
                    ).fetchone()[0]
            except sqlite3.OperationalError:  # no dbstat in this build
                tables = {}
        return {"bytes": os.path.getsize(path), "tables": tables}
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        tables = {name: conn.execute("SELECT pg_total_relation_size(%s)", (name,)).fetchone()[0]  # type: ignore[index]
                  for name in XRQ_TABLES}
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return {"bytes": sum(tables.values()), "database_bytes": total, "tables": tables}


def plans(url: str, last_job: int) -> dict[str, Any]:
    """Each filter's listing query, and each backlog statement, as the database plans it: the indexes
    used, any whole-table read."""
    from db.backlog import backlog_plans
    from db.engine import open_database
    from db.listing import explain
    from db.queries import ReportFilter

    day = NOW - timedelta(days=1)
    wheres = {"job": ReportFilter(job_id=last_job), "model": ReportFilter(model="small"),
              "since": ReportFilter(since=day), "status": ReportFilter(status="failed"),
              "text": ReportFilter(text="pneumothorax"),
              "confidence": ReportFilter(max_confidence=0.02, order_by="confidence")}
    db = open_database(url)
    out: dict[str, Any] = {}
    try:
        statements = {name: explain(db, where) for name, where in wheres.items()}
        statements.update({f"backlog {name}": lines for name, lines in
                           backlog_plans(db, stuck_after=timedelta(hours=1), max_attempts=3).items()})
        for name, lines in statements.items():
            plan = "\n".join(lines)
            if db.dialect == "postgresql":
                indexes = sorted(set(re.findall(r"(?:using|Index Scan on) (\w+)", plan)))
                full = sorted(set(re.findall(r"Seq Scan on (\w+)", plan)) - SMALL)
            else:  # SCAN: every row of a table, or of an index (but a partial index's rows are the filter's)
                indexes = sorted(set(re.findall(r"INDEX (\w+)", plan)))
                full = sorted({m.group(1) for line in lines if (m := re.match(r"SCAN (\w+)", line))
                               and m.group(1) not in SMALL and not any(p in line for p in PARTIAL)})
            out[name] = {"indexes": indexes, "full_scans": full, "plan": lines}
    finally:
        db.dispose()
    return out


def query_times(url: str, given: Any = None, best_of: int = 1) -> dict[str, float]:
    """The database work of `xrq status` and `xrq backlog --dry-run`, in this process (no start-up); on
    `given` (a Database, left open) instead of a new one when given; the best of `best_of` runs each."""
    from db.backlog import count_backlog, find_backlog, jobs_to_score
    from db.engine import open_database
    from db.queries import activity, job_summary, list_jobs
    from db.schema import utcnow

    db = given or open_database(url)
    calls = {"status_jobs": lambda: list_jobs(db),
             "status_activity": lambda: activity(db, utcnow() - timedelta(hours=1)),
             "status_job": lambda: job_summary(db, 1),
             "backlog_selection": lambda: find_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3),
             "backlog_dry_run_counts": lambda: count_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3),
             "backlog_to_score": lambda: jobs_to_score(db)}
    out = {}
    try:
        for name, call in calls.items():
            times = []
            for _ in range(best_of):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            out[name] = round(min(times), 3)
    finally:
        if given is None:
            db.dispose()
    return out


def before_and_after(url: str) -> dict[str, dict[str, float]]:
    """`query_times` as they were, beside as they are, in this one run on this one database (PostgreSQL):
    the planner's JIT on (xrq's sessions turn it off), and without migration 0014's backlog index
    (dropped, timed, created again)."""
    from sqlalchemy import event

    from db.engine import open_database
    from db.schema import Base

    out = {"now": query_times(url, best_of=3)}
    db = open_database(url)

    def jit_on(connection: Any, _record: Any) -> None:  # after xrq's own `SET jit = off`
        connection.execute("SET jit = on")
        connection.commit()

    event.listen(db.engine, "connect", jit_on)
    try:
        out["jit_on"] = query_times(url, db, best_of=3)
    finally:
        db.dispose()
    (index,) = [i for i in Base.metadata.tables["job_studies"].indexes if i.name == "ix_job_studies_backlog"]
    db = open_database(url)
    try:
        index.drop(db.engine)
        try:
            out["without_backlog_index"] = query_times(url, best_of=3)
        finally:
            index.create(db.engine)
    finally:
        db.dispose()
    return out


def measure(kind: str, n: int, workdir: Path, full: list[str], keep: bool) -> dict[str, Any]:
    url = backend_url(kind, n, workdir)
    result: dict[str, Any] = {"backend": kind, "n": n}
    try:
        from db.engine import open_database

        db = open_database(url)
        filled = fill(db, n)
        db.dispose()
        result["fill_s"] = round(filled.seconds, 1)
        result["reports"] = filled.reports
        size = analyze_and_size(url)
        result["size"] = size
        result["bytes_per_report"] = round(size["bytes"] / filled.reports)
        last_base_job = filled.small_job - 1
        jobs = [str(j) for j in filled.jobs]

        def run(args: list[str], **kw: Any) -> dict[str, Any]:
            expanded: list[str] = []
            for a in args:
                expanded += jobs if a == "{jobs}" else [a.replace("{work}", str(workdir))]
            m = run_xrq(expanded, url, **kw)
            print(f"  {kind} {' '.join(expanded)[:70]}: first {m.first_line_s and round(m.first_line_s, 2)} s, "
                  f"wall {m.wall_s:.2f} s, {m.peak_rss_mb:.0f} MB, exit {m.exit_code}", file=sys.stderr)
            return {"first_line_s": None if m.first_line_s is None else round(m.first_line_s, 3),
                    "wall_s": round(m.wall_s, 3), "peak_rss_mb": round(m.peak_rss_mb, 1), "exit_code": m.exit_code,
                    "lines": m.lines, **({"stderr": m.stderr[-300:]} if "Traceback" in m.stderr else {})}

        result["startup"] = run(["--version"])  # the interpreter and the CLI
        result["startup_db"] = run(["db", "current"])  # ... and opening the database, checking its schema
        result["first_line"] = {fmt: run(["reports", "--format", fmt], lines=1 if fmt != "csv" else 2)
                                for fmt in ("jsonl", "csv", "table")}
        result["filters"] = {name: run(["reports", "--format", "jsonl", *args], lines=1)
                             for name, args in filters(last_base_job).items()}
        result["status"] = {"status": run(["status"]), "status_json": run(["status", "--json"]),
                            "status_job": run(["status", str(last_base_job)]),
                            "backlog_dry_run": run(["backlog", "--dry-run"])}
        if kind == "postgres":
            result["queries_before_after_s"] = before_and_after(url)
            result["queries_s"] = result["queries_before_after_s"]["now"]
        else:
            result["queries_s"] = query_times(url)
        result["full"] = {name: run(FULL[name]) for name in full}
        for name in ("all.jsonl", "all.csv", "all.parquet"):
            (workdir / name).unlink(missing_ok=True)
        result["plans"] = plans(url, last_base_job)
    finally:
        if not keep:
            drop(url)
            if url.startswith("sqlite"):
                Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="studies (about 0.97 reports each)")
    parser.add_argument("--backends", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    parser.add_argument("--full", nargs="*", default=list(FULL), choices=list(FULL),
                        help="the full reads to measure (each reads every row)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the SQLite file and outputs go")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("-o", "--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    import shutil

    disk = shutil.disk_usage("/")
    out = {"n": args.n, "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "disk_free_gb": round(disk.free / 2**30, 1),
           "runs": [measure(kind, args.n, args.workdir, args.full, args.keep) for kind in args.backends]}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(out, indent=1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
