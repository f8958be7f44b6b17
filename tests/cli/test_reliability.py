"""Reliability (issue 19): a full disk, file names that are not UTF-8, very deep folders, and bad
XRQ_* URLs or schedules each end in a named `Error: ...` (or a recorded study), never a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import event

from cli.main import cli
from tests.conftest import EXAMPLES

SECRET = "s3cr3t-pw"


def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


# ---- bad settings, in every command that reads them -----------------------------------------------------

BAD_SETTINGS = [
    ("XRQ_DATABASE_URL", f"postgresql://xrq:{SECRET}@localhost:99999/xrq", "bad port"),
    ("XRQ_DATABASE_URL", f"mysql://xrq:{SECRET}@localhost/xrq", "unknown scheme"),
    ("XRQ_DATABASE_URL", "xrq.db", "no scheme"),
    ("XRQ_BROKER_URL", f"redis://:{SECRET}@localhost:99999/0", "bad port"),
    ("XRQ_BROKER_URL", f"foo://:{SECRET}@localhost/0", "unknown scheme"),
    ("XRQ_BACKLOG_CRON", "99 99 99 99 99", "must be within 0-59"),
    ("XRQ_BACKLOG_CRON", "0 2 * * 7", "must be within 0-6"),
]


def every_command(folder: Path, model: Path) -> list[list[str]]:
    return [["status"], ["reports"], ["export", "1", "-o", "e.csv"], ["show", "1", "-o", "s.png"],
            ["submit", str(folder), "--model", str(model)],
            ["backlog", "--dry-run"], ["backlog"], ["health"], ["worker"], ["beat"], ["db", "upgrade"],
            ["db", "current"], ["evaluate", "--job", "1"], ["truth", "import", str(folder / "CXR25_IM-1024-2001.png")]]


@pytest.mark.parametrize(("var", "value", "said"), BAD_SETTINGS, ids=lambda v: str(v)[:24])
def test_a_bad_url_or_schedule_is_named_in_every_command(var: str, value: str, said: str, tmp_path: Path,
                                                         tiny_model: Path) -> None:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", var: value}
    for args in every_command(EXAMPLES, tiny_model):
        result = run(*args, env=env)
        assert result.exit_code != 0, (args, result.output)
        assert result.output.startswith(f"Error: {var}"), (args, result.output)
        assert said in result.output and SECRET not in result.output, (args, result.output)


def test_good_urls_and_schedules_still_pass() -> None:
    from worker.settings import Settings

    s = Settings.from_env({"XRQ_DATABASE_URL": "postgresql+psycopg://u:p@h:5432/x", "XRQ_BROKER_URL":
                           "sqla+sqlite:///broker.db", "XRQ_BACKLOG_CRON": "*/15 1-5 * jan-mar mon-fri"})
    assert s.broker_url == "sqla+sqlite:///broker.db"
    from worker.app import backlog_schedule

    backlog_schedule(s.backlog_cron)  # Celery takes what the check lets through


# ---- a full disk --------------------------------------------------------------------------------------

def fill_up(url: str) -> None:
    """Make the SQLite database at `url` full from now on: every new connection may not grow the file
    (`PRAGMA max_page_count` = its size), which SQLite reports exactly as a full disk (SQLITE_FULL)."""
    from worker import runtime

    db = runtime.database(url)
    with db.engine.connect() as conn:  # no free pages left inside the file either
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.commit()
        conn.exec_driver_sql("VACUUM")

    def no_room(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        pages = cursor.execute("PRAGMA page_count").fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    event.listen(db.engine, "connect", no_room)
    db.engine.dispose()  # pooled connections go: the next ones are full


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """40 one-image studies: enough rows that recording them, or their reports, needs new pages."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder / f"image-{i:02d}.png")
    return folder


def test_a_full_database_is_an_error_not_a_traceback(tmp_path: Path, tiny_model: Path, many: Path) -> None:
    url = f"sqlite:///{tmp_path / 'full.db'}"
    fill_up(url)
    result = run("submit", str(many), "--model", str(tiny_model), env={"XRQ_DATABASE_URL": url})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: the database is full (database or disk is full): free space")
    assert "Traceback" not in result.output and "OperationalError" not in result.output.splitlines()[0][:40]


def test_a_database_full_while_reporting_never_exits_0(tmp_path: Path, tiny_model: Path, many: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.runner import LocalRunner

    url = f"sqlite:///{tmp_path / 'full.db'}"
    original = LocalRunner.run

    def full_then_run(self: LocalRunner, *args: Any, **kwargs: Any) -> Any:
        fill_up(url)  # the job is recorded; the disk fills up before its reports are written
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalRunner, "run", full_then_run)
    for extra in ([], ["--json"]):
        result = run("submit", str(many), "--model", str(tiny_model), "--max-new-tokens", "30", *extra,
                     env={"XRQ_DATABASE_URL": url})
        assert result.exit_code == 1, result.output
        assert "queued for workers" not in result.output
        assert "Error: job 1 is not finished" in result.output and "database or disk is full" in result.output


# ---- names that are not UTF-8, folders 1,100 deep -------------------------------------------------------

@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_names_that_are_not_utf8_are_recorded_losslessly(tmp_path: Path, tiny_model: Path) -> None:
    from db.queries import job_summary
    from model.imaging.files import text_to_name
    from worker import runtime

    folder = tmp_path / os.fsdecode(b"caf\xe9")  # Latin-1 folder name
    folder.mkdir()
    name = os.fsdecode(b"scan-\xff\xfe.png")
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder / name)
    shutil.copy(EXAMPLES / "CXR7_IM-2263-1001.png", folder / "back\\slash.png")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run("submit", str(folder), "--model", str(tiny_model), "--max-new-tokens", "3", "--json",
                 env={"XRQ_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    summary = job_summary(runtime.database(url), 1)
    assert summary.counts["done"] == 2 and summary.source.endswith("caf\\xe9")
    with runtime.database(url).engine.connect() as conn:
        stored = sorted(conn.exec_driver_sql("SELECT relpath, path FROM images").all())
    assert [r for r, _ in stored] == ["back\\\\slash.png", "scan-\\xff\\xfe.png"]
    assert sorted(text_to_name(p) for _, p in stored) == sorted(str(folder / n) for n in ("back\\slash.png", name))
    shown = run("reports", "--format", "jsonl", env={"XRQ_DATABASE_URL": url})
    assert shown.exit_code == 0 and "scan-\\\\xff\\\\xfe.png" in shown.output


def test_1100_nested_folders_are_walked(tmp_path: Path) -> None:
    from model.imaging.scan import scan_folder

    deep = tmp_path / "top"
    inner = str(deep)
    os.mkdir(inner)
    for _ in range(1100):  # one by one: pathlib's and os.makedirs's parents=True recurse themselves
        inner += "/d"
        os.mkdir(inner)
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", inner + "/x.png")
    shutil.copy(EXAMPLES / "CXR7_IM-2263-1001.png", deep / "y.png")
    studies = scan_folder(deep, group_by="image")
    assert [s.uid for s in studies] == ["d/" * 1100 + "x.png", "y.png"]
    from bench.faults_reliability import remove_deep

    remove_deep(deep)  # pytest's clean-up (shutil.rmtree) recurses, and would fail at this depth


def test_a_file_that_is_plainly_not_a_picture_is_ignored_not_failed(tmp_path: Path, tiny_model: Path) -> None:
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    (folder / "notes.txt").write_text("to do: read these\n")
    (folder / "report.PDF").write_bytes(b"%PDF-1.4 not a picture")
    (folder / "no-suffix").write_text("could be a DICOM file that lost its header\n")  # fails, with its reason
    (folder / "notes.png").write_text("text named like a picture\n")  # fails: the name says picture
    shutil.copy(EXAMPLES / "CXR7_IM-2263-1001.png", folder / "picture.dat")  # content decides: a study
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    args = ["submit", str(folder), "--model", str(tiny_model), "--max-new-tokens", "3"]
    data = json.loads(run(*args, "--json", env=env).output)
    assert data["ignored"] == ["notes.txt", "report.PDF"]
    assert data["counts"]["done"] == 2 and sorted(f["uid"] for f in data["failures"]) == ["no-suffix", "notes.png"]
    text = run(*args, env=env).output
    assert "  ignored   2 files that are not pictures (notes.txt, report.PDF)" in text
