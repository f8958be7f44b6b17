"""`xrq listen` against DCMTK's storescu/echoscu: allow list, refused classes, durability, study timeout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from db.schema import Image, JobStudy, Report
from tests.interop.peers import ListenerProcess, echoscu, free_port, storescu, wait_for
from tests.interop.studies import CT_IMAGE_STORAGE, make_study
from worker import runtime
from worker.listen import Listener, scp_config
from worker.settings import Settings


def settings_for(tmp_path: Path, sqlite_url: str, tiny_model: Path, **changes: object) -> Settings:
    values: dict[str, object] = dict(
        database_url=sqlite_url, model=str(tiny_model), listen_inbox=str(tmp_path / "inbox"),
        listen_port=free_port(), study_timeout=1, decode_workers=1, listen_allow="MODALITY@127.0.0.1",
        min_free_bytes=0)
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def listening(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> Iterator[Listener]:
    listener = Listener(settings_for(tmp_path, sqlite_url, tiny_model), scp_config(
        settings_for(tmp_path, sqlite_url, tiny_model)))
    listener.start()
    yield listener
    listener.stop()


def reported(settings: Settings) -> list[tuple[int, int, int]]:
    """(job id, images, reports) of every job in the database."""
    db = runtime.database(settings.database_url)
    with db.session() as s:
        jobs = s.scalars(select(JobStudy.job_id).distinct()).all()
        return [(j, s.scalar(select(func.count()).select_from(Image).where(Image.job_id == j)) or 0,
                 s.scalar(select(func.count()).select_from(Report).where(Report.job_id == j)) or 0)
                for j in jobs]


def test_echo_from_an_allowed_peer_and_rejection_of_any_other(listening: Listener) -> None:
    port = listening.scp.port
    assert echoscu(port).returncode == 0
    refused = echoscu(port, aet="STRANGER")
    assert refused.returncode != 0
    assert "Rejected" in refused.stdout + refused.stderr or "rejected" in (refused.stdout + refused.stderr).lower()
    assert listening.counters.rejected_associations == 1


def test_only_images_are_stored_and_the_association_goes_on(listening: Listener, tmp_path: Path) -> None:
    _, ct = make_study(tmp_path / "ct", 1, sop_class=CT_IMAGE_STORAGE, modality="CT")
    _, cr = make_study(tmp_path / "cr", 1)
    out = storescu(listening.scp.port, ct[0], cr[0])
    text = out.stdout + out.stderr
    assert "Store Response (Refused: SOPClassNotSupported)" in text, text  # storescu's words for 0x0122
    listening.inbox.settle(pydicom.dcmread(cr[0]).StudyInstanceUID)  # from the journal into incoming/
    stored = list((Path(listening.settings.listen_inbox)).rglob("*.dcm"))
    assert [p.name for p in stored] == [cr[0].name]
    assert listening.counters.stored == 1 and listening.counters.refused == 1


def test_a_study_split_over_two_associations_is_one_job_reported_once_quiet(listening: Listener,
                                                                           tmp_path: Path) -> None:
    study, files = make_study(tmp_path / "s", 2)
    assert storescu(listening.scp.port, files[0]).returncode == 0
    assert storescu(listening.scp.port, files[1]).returncode == 0
    wait_for(lambda: listening.stats.submitted, timeout=120, what="the study to be submitted")
    assert [uid for uid, _ in listening.stats.submitted] == [study]
    assert reported(listening.settings) == [(listening.stats.submitted[0][1], 2, 1)]


def test_an_instance_too_large_is_refused_out_of_resources_and_leaves_no_file(
        tmp_path: Path, sqlite_url: str, tiny_model: Path) -> None:
    settings = settings_for(tmp_path, sqlite_url, tiny_model, max_file_bytes=1000)
    listener = Listener(settings, scp_config(settings))
    listener.start()
    try:
        _, files = make_study(tmp_path / "s", 1)
        out = storescu(listener.scp.port, files[0])
        assert "Store Response (Refused: OutOfResources)" in out.stdout + out.stderr, out.stdout + out.stderr
        assert not list(Path(settings.listen_inbox).rglob("*.dcm")) and not list(Path(settings.listen_inbox).rglob(
            "tmp/*"))
    finally:
        listener.stop()


def acknowledged(inbox: Path, study: str) -> list[str]:
    """The instances of a study on disk in an inbox nobody runs: written into incoming/ or in the journal."""
    from interop.journal import records

    found = {p.name for p in (inbox / "incoming" / study).glob("*.dcm")}
    for segment in (inbox / "journal").glob("*.wal"):
        found |= {f"{r.sop_uid}.dcm" for r in records(segment.read_bytes()) if r.study_uid == study}
    return sorted(found)


def test_kill_9_after_acknowledgement_loses_nothing(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> None:
    port = free_port()
    inbox = tmp_path / "inbox"
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model), "XRQ_LISTEN_INBOX": str(inbox),
           "XRQ_LISTEN_PORT": str(port), "XRQ_LISTEN_ALLOW": "MODALITY@127.0.0.1", "XRQ_DECODE_WORKERS": "1",
           "XRQ_MIN_FREE_BYTES": "0"}
    first = ListenerProcess(tmp_path / "first.log", env, "--study-timeout", "3600")
    first.wait_ready()
    study, files = make_study(tmp_path / "s", 2)
    assert storescu(port, *files).returncode == 0  # both acknowledged
    first.kill9()
    assert acknowledged(inbox, study) == sorted(f.name for f in files)  # on disk: in the journal or incoming/
    second = ListenerProcess(tmp_path / "second.log", env, "--study-timeout", "1")
    try:
        second.wait_ready()
        settings = Settings(database_url=sqlite_url)
        rows = wait_for(lambda: [r for r in reported(settings) if r[2]], timeout=180, what="the study's report")
        assert rows[0][1:] == (2, 1)
    finally:
        second.stop()
    logs = first.text() + second.text()
    assert "submitted as job" in logs
    assert "Doe" not in logs and "PID-4711" not in logs  # patient data never in a log


def test_a_late_image_reports_the_study_again_over_all_its_images(listening: Listener, tmp_path: Path) -> None:
    study, files = make_study(tmp_path / "s", 2)
    assert storescu(listening.scp.port, files[0]).returncode == 0
    wait_for(lambda: [r for r in reported(listening.settings) if r[2]], timeout=120, what="the first report")
    assert storescu(listening.scp.port, files[1]).returncode == 0
    wait_for(lambda: len(listening.stats.submitted) == 2, timeout=120, what="the second submission")
    jobs = sorted(reported(listening.settings))
    assert [(images, n) for _, images, n in jobs] == [(1, 1), (2, 1)]  # the new report covers both images
    assert [uid for uid, _ in listening.stats.submitted] == [study, study]
    from db.deliveries import report_sources
    from worker.documents import sr_documents

    sources = report_sources(runtime.database(listening.settings.database_url), [j for j, _, _ in jobs])
    first, second = (sr for _, sr, _ in sr_documents(sources))
    assert first.SOPInstanceUID != second.SOPInstanceUID  # a new draft, in the same SR series
    assert first.SeriesInstanceUID == second.SeriesInstanceUID and "PredecessorDocumentsSequence" not in first
    named = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_too_little_free_disk_is_out_of_resources(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> None:
    settings = settings_for(tmp_path, sqlite_url, tiny_model, min_free_bytes=10**15)  # a petabyte free
    listener = Listener(settings, scp_config(settings))
    listener.start()
    try:
        _, files = make_study(tmp_path / "s", 1)
        out = storescu(listener.scp.port, files[0])
        assert "Store Response (Refused: OutOfResources)" in out.stdout + out.stderr
        assert not list(Path(settings.listen_inbox).rglob("*.dcm"))
    finally:
        listener.stop()


def test_a_submission_that_fails_is_tried_again(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> None:
    settings = settings_for(tmp_path, sqlite_url, tiny_model)
    calls: list[Path] = []

    def flaky(folder: Path) -> int:
        calls.append(folder)
        if len(calls) == 1:
            raise OSError("the database is down")
        return 7

    listener = Listener(settings, scp_config(settings), submit=flaky)
    listener.start()
    try:
        study, files = make_study(tmp_path / "s", 1)
        assert storescu(listener.scp.port, files[0]).returncode == 0
        wait_for(lambda: listener.stats.submitted, timeout=60, what="the second try")
        assert listener.stats.submitted == [(study, 7)] and len(calls) == 2
        assert listener.stats.errors == [f"{study}: the database is down"]
        assert not (Path(settings.listen_inbox) / "studies" / study / ".pending").exists()
    finally:
        listener.stop()


def test_associations_beyond_the_bound_are_rejected(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    settings = settings_for(tmp_path, sqlite_url, tiny_model, max_associations=1)
    listener = Listener(settings, scp_config(settings))
    listener.start()
    held = None
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", listener.scp.port, ae_title="XRQ")
        assert held.is_established
        second = echoscu(listener.scp.port)
        assert second.returncode != 0 and "Association Rejected" in second.stderr + second.stdout
        held.release()
        assert wait_for(lambda: echoscu(listener.scp.port).returncode == 0, timeout=30, what="a free association")
    finally:
        if held is not None and held.is_established:
            held.release()
        listener.stop()
