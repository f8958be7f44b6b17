"""End to end against a real PACS: Debian's Orthanc (with its DICOMweb plugin) routes a study to
`xrq listen`, xrq reports it and sends the SR back (C-STORE via XRQ_PUSH_TO, and STOW-RS with
`xrq push`); Orthanc then holds, in the same study, an SR whose text is the stored report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from cli.main import cli
from db import deliveries
from db.queries import reports
from interop.sr import report_text
from tests.interop.peers import Orthanc, dciodvfy_errors, free_port, wait_for
from tests.interop.studies import make_study
from worker import runtime
from worker.listen import Listener, scp_config
from worker.settings import Settings


@pytest.fixture
def hospital(tmp_path: Path, sqlite_url: str, tiny_model: Path) -> Iterator[tuple[Orthanc, Listener]]:
    """Orthanc and xrq listen, each knowing the other; xrq pushes every report back (XRQ_PUSH_TO)."""
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", xrq_port=port).start()
    settings = Settings(database_url=sqlite_url, model=str(tiny_model), listen_inbox=str(tmp_path / "inbox"),
                        listen_port=port, study_timeout=1, decode_workers=1, listen_allow="ORTHANC@127.0.0.1",
                        min_free_bytes=0, push_to=pacs.destination)
    listener = Listener(settings, scp_config(settings))
    listener.start()
    try:
        yield pacs, listener
    finally:
        listener.stop()
        pacs.stop()


def srs_in(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = []
    for instance in pacs.instances_of(study_uid):
        data = pacs.file(str(instance["ID"]))
        ds = pydicom.dcmread(BytesIO(data))
        if ds.Modality == "SR":
            found.append(ds)
    return found


def route_study(pacs: Orthanc, folder: Path, n: int = 2) -> str:
    study_uid, files = make_study(folder, n)
    for path in files:
        pacs.upload(path)
    study = pacs.study_id(study_uid)
    assert study is not None
    pacs.send_to_xrq([study])
    return study_uid


def test_orthanc_routes_a_study_and_holds_the_sr_of_the_stored_report(
        hospital: tuple[Orthanc, Listener], tmp_path: Path) -> None:
    pacs, listener = hospital
    study_uid = route_study(pacs, tmp_path / "study")
    [sr] = wait_for(lambda: srs_in(pacs, study_uid), timeout=180, what="the SR in Orthanc")
    db = runtime.database(listener.settings.database_url)
    [row] = reports(db)
    assert row.uid == study_uid
    assert report_text(sr) == row.text
    assert sr.StudyInstanceUID == study_uid and sr.VerificationFlag == "UNVERIFIED"
    assert sr.PatientID == "PID-4711"
    saved = tmp_path / "from-orthanc.dcm"
    sr.save_as(saved, enforce_file_format=True)
    assert dciodvfy_errors(saved) == []
    evidence = {i.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert len(evidence) == 2

    # The same SR over DICOMweb (STOW-RS): delivered once, then "already delivered"; still one SR.
    env = {"XRQ_DATABASE_URL": listener.settings.database_url}
    job = str(wait_for(lambda: listener.stats.submitted, timeout=60, what="the submission")[0][1])
    first = CliRunner().invoke(cli, ["push", job, "--to", pacs.dicomweb, "--json"], env=env)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output) | {"errors": []} == {"destination": pacs.dicomweb, "sent": 1,
                                                          "already_delivered": 0, "failed": 0, "skipped": 0,
                                                          "errors": []}
    again = CliRunner().invoke(cli, ["push", job, "--to", pacs.destination, "--json"], env=env)
    assert json.loads(again.output)["sent"] == 0 and json.loads(again.output)["already_delivered"] == 1
    assert len(srs_in(pacs, study_uid)) == 1  # the same SOP Instance UID each time: replaced, not added


def test_pacs_down_during_a_push_loses_nothing_and_the_backlog_delivers(
        hospital: tuple[Orthanc, Listener], tmp_path: Path) -> None:
    pacs, listener = hospital
    study_uid = route_study(pacs, tmp_path / "study", n=1)
    wait_for(lambda: srs_in(pacs, study_uid), timeout=180, what="the first SR in Orthanc")
    other = Orthanc(tmp_path / "second-pacs", xrq_port=listener.scp.port)  # configured, not started: down
    env = {"XRQ_DATABASE_URL": listener.settings.database_url}
    job = str(wait_for(lambda: listener.stats.submitted, timeout=60, what="the submission")[0][1])
    down = CliRunner().invoke(cli, ["push", job, "--to", other.destination], env=env)
    assert down.exit_code == 1
    assert f"Error: the PACS {other.destination} cannot be reached; 1 SR(s) not delivered, recorded for retry" \
        in down.output
    db = runtime.database(listener.settings.database_url)
    [source] = deliveries.report_sources(db, [int(job)])
    states = [(d["destination"], d["state"]) for d in deliveries.deliveries_of(db, source.report_id)]
    assert (other.destination, "failed") in states
    other.start()
    try:
        from worker.backlog import run_backlog

        run = run_backlog(listener.settings.replace(push_to=None), score=False)
        assert run.redelivered == 1, run
        assert len(srs_in(other, study_uid)) == 1
        again = CliRunner().invoke(cli, ["push", job, "--to", other.destination, "--json"], env=env)
        assert json.loads(again.output)["sent"] == 0
    finally:
        other.stop()


def test_xrq_push_to_sends_each_report_of_a_submitted_folder(tmp_path: Path, sqlite_url: str,
                                                             tiny_model: Path) -> None:
    """XRQ_PUSH_TO on `xrq submit`: each batch's reports reach the PACS without a hand step."""
    pacs = Orthanc(tmp_path / "orthanc", xrq_port=free_port()).start()
    try:
        study_uid, _ = make_study(tmp_path / "folder", 2)
        env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model), "XRQ_PUSH_TO": pacs.destination}
        result = CliRunner().invoke(cli, ["submit", str(tmp_path / "folder")], env=env)
        assert result.exit_code == 0, result.output
        [sr] = srs_in(pacs, study_uid)
        [row] = reports(runtime.database(sqlite_url))
        assert report_text(sr) == row.text
    finally:
        pacs.stop()
