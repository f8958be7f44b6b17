"""`xrq jobs delete`: a job's rows go (its reports too unless kept), a report another job counts moves
there, orphaned studies go, a job a worker may hold is refused, and an archive comes first."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from bench.scale_data import fill
from cli.main import cli
from db.engine import Database, open_database
from db.errors import JobBusyError
from db.retire import retire_job
from db.schema import Image, Job, JobStudy, Report, Study


@pytest.fixture
def filled(db_url: str) -> Database:
    """300 studies in jobs 1-3 of 100 (model base), job 4 (model small) reporting studies 1, 101, 201;
    job 5 (model base) counts study 5, which job 1 reported (it was skipped there)."""
    db = open_database(db_url)
    fill(db, 300, job_size=100)
    with db.session() as s:
        s.add(Job(id=5, fingerprint="f" * 64, source="/again", model_id=1, group_by="auto", batch_size=1))
        s.flush()
        s.add(JobStudy(job_id=5, study_id=5, status="skipped"))
    return db


def count(db: Database, table: type, *where: object) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(table).where(*where)) or 0  # type: ignore[arg-type]


def test_a_job_is_deleted_after_its_archive_and_what_others_use_stays(filled: Database, db_url: str,
                                                                      tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": db_url}
    with pytest.raises(JobBusyError, match="job 1 has 1 studies queued or running"):
        retire_job(filled, 1)  # study 3 is queued: a worker may hold it
    assert count(filled, JobStudy, JobStudy.job_id == 1) == 100  # nothing was deleted
    with filled.session() as s:
        s.execute(update(JobStudy).where(JobStudy.status == "queued").values(status="failed"))
    job1_reports = count(filled, Report, Report.job_id == 1)
    archive = tmp_path / "job1.parquet"
    result = CliRunner().invoke(cli, ["jobs", "delete", "1", "--archive", str(archive), "--yes", "--json"], env=env)
    assert result.exit_code == 0, result.output
    done = json.loads(result.output.splitlines()[-1])[0]
    assert len(pd.read_parquet(archive)) == 100
    assert done == {"job_id": 1, "studies": 100, "images": 200, "reports_deleted": job1_reports - 1,
                    "reports_moved": 1, "reports_kept": 0, "orphans_deleted": 98, "job_deleted": True}
    assert count(filled, Job, Job.id == 1) == 0 and count(filled, Image, Image.job_id == 1) == 0
    with filled.session() as s:
        assert s.scalar(select(Report.job_id).where(Report.study_id == 5, Report.model_id == 1)) == 5
        assert s.get(Study, 1) is not None and s.get(Study, 5) is not None and s.get(Study, 2) is None
    listed = CliRunner().invoke(cli, ["reports", "--job", "5", "--format", "jsonl"], env=env)
    assert [json.loads(line)["uid"] for line in listed.output.splitlines()] == ["S00000005"]


def test_kept_reports_stay_with_their_job_row(filled: Database, db_url: str) -> None:
    with filled.session() as s:
        s.execute(update(JobStudy).where(JobStudy.status == "queued").values(status="failed"))
    reports = count(filled, Report, Report.job_id == 2)
    done = retire_job(filled, 2, keep_reports=True, chunk=7)  # several chunks
    assert (done.studies, done.images, done.reports_deleted, done.reports_kept) == (100, 200, 0, reports)
    assert not done.job_deleted and count(filled, Job, Job.id == 2) == 1
    assert count(filled, Report, Report.job_id == 2) == reports and count(filled, JobStudy, JobStudy.job_id == 2) == 0
    result = CliRunner().invoke(cli, ["jobs", "delete", "9", "--yes"], env={"XRQ_DATABASE_URL": filled.url})
    assert result.exit_code == 1 and "Error: no job 9" in result.output
