"""`submit_folder` end to end, in-process, on real X-rays and real bad files, on both databases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.schema import Image, Job, JobStudy, Report, Study
from model.errors import ModelError
from testing.badfiles import make_bad_files
from tests.conftest import EXAMPLES
from worker import runtime
from worker.settings import Settings
from worker.submit import SubmitHooks, submit_folder

IU_STUDIES = {"1000": 3, "54": 2, "7": 2, "25": 1}


def counts(url: str) -> dict[str, int]:
    with runtime.database(url).session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0
                for t in (Job, Study, Image, JobStudy, Report)}


def test_every_readable_study_is_reported_once_and_bad_files_fail_with_reasons(
    db_url: str, tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    expected = make_bad_files(iu_folder, EXAMPLES / "CXR7_IM-2263-1001.png", tmp_path / "secret.png")
    settings = Settings(database_url=db_url, model=str(tiny_model), batch_size=3)
    first = submit_folder(settings, iu_folder)

    summary = first.summary
    assert first.created and summary.finished
    assert summary.counts == {"done": len(IU_STUDIES), "failed": len(expected)}
    reasons = {f.uid: f.reason for f in summary.failures}
    assert set(reasons) == set(expected)
    for relpath, fragment in expected.items():
        assert reasons[relpath].startswith(relpath + ": ") and fragment in reasons[relpath], reasons[relpath]

    with runtime.database(db_url).session() as s:
        reported = dict(s.execute(select(Study.uid, func.count(Report.id)).join(Report)
                                  .group_by(Study.uid)).all())
        views = dict(s.execute(select(Study.uid, func.count(Image.id)).join(Image).group_by(Study.uid)).all())
        report_texts = list(s.scalars(select(Report.text)))
    assert reported == dict.fromkeys(IU_STUDIES, 1)
    assert {uid: views[uid] for uid in IU_STUDIES} == IU_STUDIES
    assert all(isinstance(t, str) for t in report_texts)

    before = counts(db_url)
    again = submit_folder(settings, iu_folder)
    assert (again.job_id, again.created, again.ran) == (first.job_id, False, 0)
    assert counts(db_url) == before


def test_content_already_reported_is_not_redone_from_another_folder(
    sqlite_url: str, tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    settings = Settings(database_url=sqlite_url, model=str(tiny_model))
    submit_folder(settings, iu_folder)
    other = tmp_path / "tonight"
    shutil.copytree(iu_folder, other)
    shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", other)
    second = submit_folder(settings, other)
    assert second.created and second.ran == 1
    assert second.summary.counts == {"skipped": len(IU_STUDIES), "done": 1}


def test_a_job_interrupted_midway_is_finished_by_submitting_again(
    sqlite_url: str, tiny_model: Path, iu_folder: Path
) -> None:
    from db import jobs

    settings = Settings(database_url=sqlite_url, model=str(tiny_model), batch_size=1)
    first = submit_folder(settings, iu_folder)
    db = runtime.database(sqlite_url)
    # Simulate a crash after the first batch: put two finished studies back to running, drop their reports.
    with db.session() as s:
        ids = list(s.scalars(select(JobStudy.study_id).order_by(JobStudy.study_id).limit(2)))
        s.execute(JobStudy.__table__.update().where(JobStudy.study_id.in_(ids)).values(status="running"))
        s.execute(Report.__table__.delete().where(Report.study_id.in_(ids)))
    again = submit_folder(settings, iu_folder)
    assert (again.job_id, again.ran) == (first.job_id, 2)
    assert jobs.count_by_status(db, first.job_id) == {"done": len(IU_STUDIES)}


def test_the_model_recommends_the_report_length_unless_the_user_sets_it(sqlite_url: str, tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    from model.network.store import load, save
    from worker.runtime import generation

    bundle = load(tiny_model)
    bundle.meta.generation = {"max_new_tokens": 17}
    recommending = save(bundle, tmp_path / "recommending")
    loaded = runtime.bundle(str(recommending))
    assert generation(Settings(), loaded).max_new_tokens == 17
    assert generation(Settings(max_new_tokens=5), loaded).max_new_tokens == 5
    assert generation(Settings(), runtime.bundle(str(tiny_model))).max_new_tokens == 60
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    submit_folder(Settings(database_url=sqlite_url, model=str(recommending)), folder)
    with runtime.database(sqlite_url).session() as s:
        stored = s.scalars(select(Report.settings)).one()
    assert stored["max_new_tokens"] == 17


# A batch that breaks (the database, out of memory, a bug): tests/worker/test_pipeline.py, in every path.


def test_the_same_studies_from_another_folder_are_read_from_that_folder(
    sqlite_url: str, tiny_model: Path, iu_folder: Path, tmp_path: Path
) -> None:
    """Same content, other file names, another model: the new job reads its own files only."""
    from model.network.bundle import build
    from model.network.store import save
    other_model = save(build("tiny", seed=1), tmp_path / "other-model")
    first = submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model)), iu_folder)
    second_folder = tmp_path / "elsewhere" / "sub"
    second_folder.mkdir(parents=True)
    for f in iu_folder.iterdir():
        shutil.copy(f, second_folder / f.name.replace(".png", "-copy.png"))
    shutil.rmtree(iu_folder)  # the first folder is gone: nothing may be read from it
    second = submit_folder(Settings(database_url=sqlite_url, model=str(other_model)), second_folder.parent)
    assert second.job_id != first.job_id and second.summary.counts == {"done": 4}
    from db.queries import reports

    rows = reports(runtime.database(sqlite_url), job_id=second.job_id)
    assert all(rel.startswith("sub/") and rel.endswith("-copy.png") for r in rows for rel in r.images)


def test_a_file_swapped_after_submission_is_not_read(sqlite_url: str, tiny_model: Path, iu_folder: Path,
                                                      tmp_path: Path) -> None:
    """Between scan and decode: one file becomes a link out of the folder, another gets new content."""
    outside = tmp_path / "outside.png"
    shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", outside)
    linked, changed = iu_folder / "CXR25_IM-1024-2001.png", iu_folder / "CXR54_IM-2145-1002.png"

    def swap(_: int) -> None:
        linked.unlink()
        linked.symlink_to(outside)
        shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", changed)

    result = submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model)), iu_folder,
                           hooks=SubmitHooks(start=swap))
    reasons = {f.uid: f.reason for f in result.summary.failures}
    assert reasons == {
        "25": "CXR25_IM-1024-2001.png: symbolic link points outside the submitted folder",
        "54": "CXR54_IM-2145-1002.png: the file changed after it was submitted: submit the folder again",
    }
    assert result.summary.counts == {"done": 2, "failed": 2}


class _Queued:
    """A runner that queues (as a broker would) and does nothing: what a job looks like once sent."""

    local = False

    def __init__(self) -> None:
        self.sent: list[int] = []

    def run(self, job_id: int, study_ids: object, progress: object = None) -> None:
        self.sent += list(study_ids)  # type: ignore[call-overload]


def test_with_a_broker_the_submitter_records_the_saved_fingerprint_without_loading_weights(
        sqlite_url: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from db.schema import Model
    from model.network.store import load

    expected = load(tiny_model, device="cpu").fingerprint
    runtime.clear()

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the submitter loaded the weights")

    monkeypatch.setattr(runtime, "bundle", no_loading)
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    queued = _Queued()
    submission = submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model)), folder,
                               runner=queued)  # type: ignore[arg-type]
    assert len(queued.sent) == 1 and submission.summary.counts == {"pending": 1}
    with runtime.database(sqlite_url).session() as s:
        model = s.scalars(select(Model)).one()
    assert (model.fingerprint, model.name, model.path) == (expected, tiny_model.name, str(tiny_model.resolve()))
    with pytest.raises(ModelError, match="writes at most 255 tokens"):  # the decoder's limit, from config.json
        submit_folder(Settings(database_url=sqlite_url, model=str(tiny_model), max_new_tokens=999), folder,
                      runner=queued)  # type: ignore[arg-type]


def test_with_a_broker_a_model_that_records_no_fingerprint_is_loaded_to_fingerprint_it(
        sqlite_url: str, tiny_model: Path, tmp_path: Path) -> None:
    from db.schema import Model

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model, foreign)
    (foreign / "xrq.json").unlink()  # saved by something else
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    submit_folder(Settings(database_url=sqlite_url, model=str(foreign)), folder, runner=_Queued())  # type: ignore[arg-type]
    with runtime.database(sqlite_url).session() as s:
        assert s.scalars(select(Model.fingerprint)).one() == runtime.bundle(str(foreign)).fingerprint
