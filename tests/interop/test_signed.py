"""A radiologist's sign-off goes to the PACS: with XRQ_PUSH_TO, signing a report in the review service
(worker.review.submit) sends a new SR, VERIFIED, the reviewer as verifying observer, the draft SR in its
predecessor documents; a PACS that is down never fails the sign-off, and the backlog sends the signed
SR (not the draft) later. Against Debian's Orthanc; dciodvfy checks every SR."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from db import deliveries
from db.accounts import create_user
from db.engine import Database
from db.review import report_review
from tests.interop.peers import Orthanc, dciodvfy_errors, free_port
from tests.interop.test_orthanc import srs_in
from tests.web.seed import DRAFTS, Seeded, seed
from worker import runtime
from worker.documents import export_sr
from worker.push import push_jobs, retry_failed
from worker.review import submit
from worker.settings import Settings

SIGNED = "Patchy opacity in the right lower lobe. IMPRESSION: Right lower lobe pneumonia."
RSNA_STUDY = pydicom.dcmread(Path(__file__).parents[1] / "data" / "dicom" / "rsna_pneumonia_cr.dcm",
                             stop_before_pixels=True).StudyInstanceUID


def _seeded(url: str, tmp_path: Path) -> tuple[Database, Seeded, int]:
    db = runtime.database(url)
    seeded = seed(db, tmp_path / "images")
    alice = create_user(db, "alice", "not-a-real-hash", "reviewer")
    return db, seeded, alice.id


def _check(sr: pydicom.Dataset, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_signing_sends_a_verified_sr_with_the_draft_as_predecessor(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    pacs = Orthanc(tmp_path / "orthanc", xrq_port=free_port()).start()
    try:
        pacs.upload(tmp_path / "images" / "rsna" / "rsna_pneumonia_cr.dcm")
        settings = Settings(database_url=sqlite_url, push_to=pacs.destination)
        assert push_jobs(settings, [seeded.job_id], pacs.destination).sent == 1  # the draft, as the batch sends it
        [draft] = srs_in(pacs, RSNA_STUDY)
        monkeypatch.setenv("XRQ_PUSH_TO", pacs.destination)

        report_id = seeded.report_ids["rsna"]
        done = submit(db, report_id, base_version=0, action="sign", text=SIGNED, author_id=alice)
        assert done.state == "signed"
        srs = srs_in(pacs, RSNA_STUDY)
        assert len(srs) == 2
        [signed] = [sr for sr in srs if sr.SOPInstanceUID != draft.SOPInstanceUID]
        assert (signed.VerificationFlag, signed.CompletionFlag) == ("VERIFIED", "COMPLETE")
        assert draft.VerificationFlag == "UNVERIFIED"
        assert signed.StudyInstanceUID == RSNA_STUDY and signed.SeriesInstanceUID == draft.SeriesInstanceUID
        assert str(signed.VerifyingObserverSequence[0].VerifyingObserverName) == "alice"
        [pred] = signed.PredecessorDocumentsSequence
        assert pred.StudyInstanceUID == RSNA_STUDY
        assert [i.ReferencedSOPInstanceUID for s in pred.ReferencedSeriesSequence
                for i in s.ReferencedSOPSequence] == [draft.SOPInstanceUID]
        from interop.sr import report_text
        assert report_text(signed) == SIGNED and report_text(draft) == DRAFTS["rsna"]
        _check(signed, tmp_path, "signed.dcm")
        rows = deliveries.deliveries_of(db, report_id)
        assert [(r["kind"], r["state"]) for r in rows] == [("sr", "delivered"), ("sr-signed", "delivered")]

        # An addendum is one more VERIFIED SR in the study; the first signed one stays.
        submit(db, report_id, base_version=1, action="sign", text=SIGNED + " Addendum: follow-up in 6 weeks.",
               author_id=alice)
        srs = srs_in(pacs, RSNA_STUDY)
        assert len(srs) == 3
        assert sorted(sr.VerificationFlag for sr in srs) == ["UNVERIFIED", "VERIFIED", "VERIFIED"]
        [addendum] = [sr for sr in srs if report_text(sr).endswith("Addendum: follow-up in 6 weeks.")]
        assert addendum.InstanceNumber == 3 and signed.InstanceNumber == 2
        [pred] = addendum.PredecessorDocumentsSequence  # the draft and the signed SR it supersedes
        assert sorted(i.ReferencedSOPInstanceUID for s in pred.ReferencedSeriesSequence
                      for i in s.ReferencedSOPSequence) == sorted([draft.SOPInstanceUID, signed.SOPInstanceUID])
        _check(addendum, tmp_path, "addendum.dcm")
        # Retrying has nothing left to send.
        assert sum(r.sent for r in retry_failed(settings)) == 0
    finally:
        pacs.stop()


def test_pacs_down_the_sign_off_stands_and_the_backlog_sends_the_signed_sr(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    pacs = Orthanc(tmp_path / "orthanc", xrq_port=free_port())  # configured, not started: down
    monkeypatch.setenv("XRQ_PUSH_TO", pacs.destination)
    report_id = seeded.report_ids["rsna"]

    done = submit(db, report_id, base_version=0, action="sign", text=SIGNED, author_id=alice)
    assert (done.state, done.version) == ("signed", 1)
    review = report_review(db, report_id)
    assert (review.state, review.current_text, review.signed_by) == ("signed", SIGNED, "alice")
    [row] = deliveries.deliveries_of(db, report_id)
    assert (row["kind"], row["state"], row["destination"]) == ("sr-signed", "failed", pacs.destination)
    assert "cannot be reached" in str(row["last_error"])

    pacs.start()
    try:
        settings = Settings(database_url=sqlite_url)
        results = retry_failed(settings)
        assert sum(r.sent for r in results) == 1 and not any(r.errors for r in results)
        [sr] = srs_in(pacs, RSNA_STUDY)  # the signed SR, rebuilt; not the draft in its place
        assert sr.VerificationFlag == "VERIFIED" and sr.SOPInstanceUID == row["uid"]
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "alice"
        _check(sr, tmp_path, "retried.dcm")
        [again] = deliveries.deliveries_of(db, report_id)
        assert (again["state"], again["attempts"]) == ("delivered", 2)
        assert sum(r.sent for r in retry_failed(settings)) == 0
    finally:
        pacs.stop()


def test_a_sign_off_whose_send_never_started_is_sent_by_the_backlog(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stops between the sign-off's commit and its send (here: db.review.submit alone, which is
    what is on disk at that moment): no delivery row exists, and the backlog still sends the signed SR."""
    from db import review

    db, seeded, alice = _seeded(db_url, tmp_path)
    pacs = Orthanc(tmp_path / "orthanc", xrq_port=free_port()).start()
    try:
        monkeypatch.setenv("XRQ_PUSH_TO", pacs.destination)
        report_id = seeded.report_ids["rsna"]
        review.submit(db, report_id, base_version=0, action="sign", text=SIGNED, author_id=alice)
        # A PNG study signed too: it has no SR to send, and the backlog says so without failing.
        review.submit(db, seeded.report_ids["1001"], base_version=0, action="sign", text="Mild cardiomegaly.",
                      author_id=alice)
        assert deliveries.deliveries_of(db, report_id) == [] and srs_in(pacs, RSNA_STUDY) == []

        settings = Settings(database_url=db_url, push_to=pacs.destination)
        results = retry_failed(settings)
        assert sum(r.sent for r in results) == 1 and not any(r.errors for r in results)
        [sr] = srs_in(pacs, RSNA_STUDY)
        assert sr.VerificationFlag == "VERIFIED"
        assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "alice"
        _check(sr, tmp_path, "unsent.dcm")
        [row] = deliveries.deliveries_of(db, report_id)
        assert (row["kind"], row["state"], row["uid"]) == ("sr-signed", "delivered", sr.SOPInstanceUID)
        assert sum(r.sent for r in retry_failed(settings)) == 0  # nothing twice
        # Older than the window: not looked for any more.
        assert deliveries.unsent_signed(db, pacs.destination, kind="sr-signed", within=timedelta(0)) == {}
    finally:
        pacs.stop()


def test_a_study_without_dicom_identity_sends_nothing_and_says_so_once(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    monkeypatch.setenv("XRQ_PUSH_TO", f"dicom://ORTHANC@127.0.0.1:{free_port()}")  # never contacted
    with caplog.at_level(logging.INFO):
        submit(db, seeded.report_ids["1001"], base_version=0, action="sign", text="Mild cardiomegaly.",
               author_id=alice)
    assert deliveries.deliveries_of(db, seeded.report_ids["1001"]) == []
    said = [r for r in caplog.records if "no SR sent" in r.getMessage()]
    assert len(said) == 1 and "no DICOM identity" in said[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_without_dicom_output_signing_sends_nothing(sqlite_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    monkeypatch.delenv("XRQ_PUSH_TO", raising=False)
    submit(db, seeded.report_ids["rsna"], base_version=0, action="sign", text=SIGNED, author_id=alice)
    assert deliveries.deliveries_of(db, seeded.report_ids["rsna"]) == []


def test_export_writes_the_signed_version_of_a_signed_report(sqlite_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    monkeypatch.delenv("XRQ_PUSH_TO", raising=False)
    submit(db, seeded.report_ids["rsna"], base_version=0, action="sign", text=SIGNED, author_id=alice)
    submit(db, seeded.report_ids["1000"], base_version=0, action="save", text="Edited, not signed.",
           author_id=alice)
    settings = Settings(database_url=sqlite_url)

    out = tmp_path / "reports.ndjson"
    from click.testing import CliRunner

    from cli.main import cli
    result = CliRunner().invoke(cli, ["export", str(seeded.job_id), "--format", "fhir", "-o", str(out)],
                                env={"XRQ_DATABASE_URL": sqlite_url})
    assert result.exit_code == 0, result.output
    by_text = {r["conclusion"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert by_text[SIGNED]["status"] == "final"
    assert by_text[SIGNED]["resultsInterpreter"] == [{"display": "alice"}]
    assert DRAFTS["rsna"] not in by_text  # the signed version replaces the draft in an export
    assert by_text[DRAFTS["1000"]]["status"] == "preliminary"  # saved, not signed: still the draft
    assert by_text[DRAFTS["1001"]]["status"] == "preliminary"

    folder = tmp_path / "sr"
    folder.mkdir()
    assert export_sr(settings, [seeded.job_id], folder).written == 1
    [path] = folder.glob("*.dcm")
    sr = pydicom.dcmread(path)
    assert sr.VerificationFlag == "VERIFIED" and len(sr.PredecessorDocumentsSequence) == 1
    assert dciodvfy_errors(path) == []


def test_a_pacs_that_never_answers_holds_the_sign_off_for_seconds_only(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that takes the connection and says nothing: the sign-off returns after the send timeout,
    stored, with a failed delivery (never the minutes of a TCP or DICOM wait without a bound)."""
    import socket
    import time

    from worker import review

    db, seeded, alice = _seeded(sqlite_url, tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        monkeypatch.setenv("XRQ_PUSH_TO", f"dicom://ORTHANC@127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(review, "SEND_TIMEOUT", 1.0)
        start = time.monotonic()
        done = submit(db, seeded.report_ids["rsna"], base_version=0, action="sign", text=SIGNED, author_id=alice)
        took = time.monotonic() - start
    assert done.state == "signed" and report_review(db, seeded.report_ids["rsna"]).state == "signed"
    assert took < 8, took
    [row] = deliveries.deliveries_of(db, seeded.report_ids["rsna"])
    assert (row["kind"], row["state"]) == ("sr-signed", "failed")
