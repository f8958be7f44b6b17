"""Reads at scale: memory flat in the number of rows, the first line at once, `| head` ends the command,
each filter on its index (PostgreSQL plans), and the table's page on a terminal.

One database per backend holds 100,000 generated studies (bench/scale_data.py, through the bulk path)
in ten jobs of 10,000: reading one job is "rows x 1", reading them all "rows x 10".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.measure import run_xrq
from bench.scale_data import fill
from db.engine import open_database
from db.listing import count_rows, explain, report_rows
from db.queries import ReportFilter

N = 100_000
JOB = 10_000  # a Parquet row group (cli/listing.ROW_GROUP): once holds as much as ten times
MARGIN_MB = 12  # what reading ten times the rows may cost beyond reading them once


@pytest.fixture(scope="module")
def scaled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database URL (SQLite file, or a PostgreSQL database of its own) holding N generated studies."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('scale') / 'xrq.db'}"
        db = open_database(url)
        fill(db, N, job_size=JOB)
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        db.dispose()
        yield url
        return
    import uuid

    import psycopg

    from tests.conftest import POSTGRES_ADMIN_URL, service_missing

    name = f"xrq_scale_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", exc)
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    db = open_database(url)
    fill(db, N, job_size=JOB)
    db.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does after a load
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


BACKENDS = pytest.mark.parametrize("scaled", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                                   indirect=True)


@BACKENDS
@pytest.mark.parametrize("command", [
    ["reports", "--format", "jsonl", "-o", "{out}/r.jsonl"],
    ["reports", "--format", "csv"],
    ["reports", "--format", "table"],
    ["export", "{jobs}", "-o", "{out}/e.parquet"],
    ["export", "{jobs}", "-o", "{out}/e.csv"],
], ids=["reports-jsonl", "reports-csv", "reports-table", "export-parquet", "export-csv"])
def test_reading_ten_times_the_rows_costs_no_more_memory(scaled: str, command: list[str], tmp_path: Path) -> None:
    def args(jobs: list[str]) -> list[str]:
        out: list[str] = []
        for a in command:
            out += jobs if a == "{jobs}" else [a.replace("{out}", str(tmp_path))]
        return out

    one_job = ["--job", "3"] if command[0] == "reports" else []
    once = run_xrq(args(["3"]) + one_job, scaled)
    ten = run_xrq(args([str(j) for j in range(1, 11)]), scaled)
    assert once.exit_code == 0 and ten.exit_code == 0, (once.stderr, ten.stderr)
    if command[0] == "reports" and "-o" not in command:
        assert ten.lines > 9 * once.lines > 9 * (JOB * 0.9)  # every row was read, not a page
    assert ten.peak_rss_mb <= once.peak_rss_mb + MARGIN_MB, (once.peak_rss_mb, ten.peak_rss_mb)


@BACKENDS
def test_the_first_line_leaves_at_once_and_head_ends_the_command(scaled: str) -> None:
    full = run_xrq(["reports", "--format", "jsonl", "--job", "3"], scaled)
    head = run_xrq(["reports", "--format", "jsonl"], scaled, lines=3)  # `xrq reports | head -3`, ten times as many
    assert head.lines == 3 and head.first_line_s is not None and full.first_line_s is not None
    # The first line of all the rows leaves no later than that of a tenth of them (plus noise): nothing
    # waits for the whole listing to be read.
    assert head.first_line_s < full.first_line_s + 1.0, (head.first_line_s, full.first_line_s)
    # It ends as the pipe closes, quietly: no traceback, no BrokenPipeError, long before a full read.
    assert head.exit_code != 0 or head.lines == 3
    assert "Traceback" not in head.stderr and "BrokenPipe" not in head.stderr, head.stderr
    assert head.wall_s < full.wall_s + 1.0


FILTERS = {
    "job": (ReportFilter(job_id=3), "job_studies_pkey"),
    "model": (ReportFilter(model="small"), "ix_reports_model_study"),
    "since": (ReportFilter(since=datetime(2026, 11, 30, tzinfo=UTC)), "ix_reports_worklist"),
    "status": (ReportFilter(status="failed"), "ix_job_studies_failed"),
    "text": (ReportFilter(text="pneumothorax"), "ix_reports_text_trgm"),
    "confidence": (ReportFilter(max_confidence=0.02, order_by="confidence"), "ix_reports_confidence"),
}


@BACKENDS
def test_the_backlog_reads_its_index_alone(scaled: str) -> None:
    """The nightly selection and the dry run's counts (2,500 of the 100,000 studies: pending, stuck,
    failed for a transient reason) are index-only scans of the studies not done (0014): at ten million
    a read of each row from the table took the dry run to 5.7 s."""
    from datetime import timedelta

    from db.backlog import backlog_plans, count_backlog, find_backlog

    db = open_database(scaled)
    try:
        plans = backlog_plans(db, stuck_after=timedelta(hours=1), max_attempts=3)
        assert set(plans) == {"pending", "stuck", "retry", "pending counts", "stuck counts", "retry counts",
                              "exhausted"}
        for name, plan in plans.items():
            text = "\n".join(plan)
            only = ("Index Only Scan using ix_job_studies_backlog " if db.dialect == "postgresql"
                    else "USING COVERING INDEX ix_job_studies_backlog")
            assert only in text, f"{name}:\n{text}"
            assert "Seq Scan" not in text and "SCAN job_studies\n" not in text + "\n", f"{name}:\n{text}"
        found = find_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3)
        counts = count_backlog(db, stuck_after=timedelta(hours=1), max_attempts=3)
        assert {job: len(ids) for job, ids in found.by_job().items()} == counts.by_job()
        assert sum(counts.by_job().values()) == 2_500 and counts.exhausted == 0  # 1% + 1% + 0.5% of N
    finally:
        db.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("scaled", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
@pytest.mark.parametrize("name", list(FILTERS))
def test_each_filter_runs_on_its_index(scaled: str, name: str) -> None:
    """The plan PostgreSQL makes for the cursor that streams the listing (DECLARE: a fast start)."""
    where, index = FILTERS[name]
    db = open_database(scaled)
    try:
        plan = "\n".join(explain(db, where))
        assert f"using {index} " in plan or f"Index Scan on {index} " in plan, plan
        for table in ("reports", "job_studies", "studies", "images"):
            assert f"Seq Scan on {table} " not in plan, plan
        rows = list(report_rows(db, where))
        assert rows and len(rows) == count_rows(db, where) < N / 2
        if where.order_by == "confidence":  # the index gives the order: least sure first, nothing sorted
            assert "Sort" not in plan, plan
            assert [r.confidence for r in rows] == sorted(r.confidence for r in rows)
    finally:
        db.dispose()


@BACKENDS
def test_the_keyset_cursor_goes_on_where_a_page_ended(scaled: str) -> None:
    db = open_database(scaled)
    try:
        from db.listing import cursor_of

        where = ReportFilter(status="failed")
        first = list(report_rows(db, where, limit=100))
        after = cursor_of(first[-1], where)
        second = list(report_rows(db, where, limit=100, after=after))
        assert [r.study_id for r in second] == [r.study_id for r in report_rows(db, where, limit=100, offset=100)]
        assert count_rows(db, where, after=after) == count_rows(db, where) - 100
    finally:
        db.dispose()


@pytest.mark.parametrize("scaled", ["sqlite"], indirect=True)
def test_scoring_a_model_of_ten_times_the_reports_costs_no_more_memory(scaled: str) -> None:
    """`xrq evaluate` streams the stored reports and keeps those with ground truth (the same 1,000 here)."""
    once = run_xrq(["evaluate", "--job", "1", "--no-meteor", "--json"], scaled)
    ten = run_xrq(["evaluate", "--model", "base", "--no-meteor", "--json"], scaled)
    assert once.exit_code == 0 and ten.exit_code == 0, (once.stderr, ten.stderr)
    assert ten.peak_rss_mb <= once.peak_rss_mb + MARGIN_MB, (once.peak_rss_mb, ten.peak_rss_mb)


@pytest.mark.parametrize("scaled", ["sqlite"], indirect=True)
def test_the_table_on_a_terminal_is_a_page_that_says_how_to_get_the_next(scaled: str) -> None:
    import os
    import pty
    import subprocess

    from bench.measure import XRQ, xrq_env

    def on_terminal(*args: str) -> list[str]:
        leader, follower = pty.openpty()
        env = {**xrq_env(scaled), "LINES": "24", "COLUMNS": "120"}
        proc = subprocess.Popen([*XRQ, *args], env=env, stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        os.close(leader)
        return b"".join(chunks).decode().splitlines()

    lines = on_terminal("reports", "--status", "failed")
    assert len(lines) == 1 + 20 + 1  # header, a page of 24 lines less 4, and the footer
    failed = count_rows(open_database(scaled), ReportFilter(status="failed"))
    footer = lines[-1]
    assert f"20 rows shown, {failed - 20} more: add --after " in footer, footer
    cursor = footer.split("--after ")[1].split()[0]
    following = on_terminal("reports", "--status", "failed", "--after", cursor)
    assert following[1] != lines[1] and f"{failed - 40} more" in following[-1]
