"""`xrq export --format sr|fhir`: a job of DICOM and PNG studies as SR files and FHIR NDJSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from cli.main import cli
from interop.sr import report_text
from tests.conftest import DATA, EXAMPLES
from tests.interop.peers import dciodvfy_errors


@pytest.fixture
def env(sqlite_url: str, tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """One job: a DICOM study of two instances (RG1), a DICOM study of one (RSNA), a PNG study (IU 25)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "rsna_pneumonia_cr.dcm"):
        shutil.copy(DATA / "dicom" / name, folder / name)
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder / "CXR25_IM-1024-2001.png")
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model)}
    result = CliRunner().invoke(cli, ["submit", str(folder)], env=env)
    assert result.exit_code == 0, result.output
    return env


def test_export_sr_writes_one_valid_sr_per_dicom_study_and_says_why_not_for_png(env: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "srs"
    result = CliRunner().invoke(cli, ["export", "1", "--format", "sr", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "Wrote 2 SR file(s) for 3 report(s) of 1 job(s)" in result.output
    assert "No SR for study 25: its files have no DICOM identity" in result.output
    reports = {r["uid"]: r["report"] for r in map(json.loads, CliRunner().invoke(
        cli, ["reports", "--format", "jsonl"], env=env).output.splitlines())}
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 2
    for path in files:
        assert dciodvfy_errors(path) == []
        sr = pydicom.dcmread(path)
        assert path.name == f"{sr.SOPInstanceUID}.dcm"
        assert report_text(sr) == reports[sr.StudyInstanceUID]
    again = CliRunner().invoke(cli, ["export", "1", "--format", "sr", "-o", str(out)], env=env)
    assert again.exit_code == 0 and sorted(out.glob("*.dcm")) == files  # same UIDs: replaced, not added


def test_export_fhir_writes_a_preliminary_diagnostic_report_per_report(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "reports.ndjson"
    result = CliRunner().invoke(cli, ["export", "1", "--format", "fhir", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and {r["status"] for r in lines} == {"preliminary"}
    systems = sorted(r["identifier"][0]["system"] for r in lines)
    assert systems == ["urn:dicom:uid", "urn:dicom:uid", "urn:xrq:study"]


def test_export_sr_of_png_only_job_is_an_error(sqlite_url: str, tiny_model: Path, iu_folder: Path,
                                                tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_MODEL": str(tiny_model)}
    assert CliRunner().invoke(cli, ["submit", str(iu_folder)], env=env).exit_code == 0
    result = CliRunner().invoke(cli, ["export", "1", "--format", "sr", "-o", str(tmp_path / "x")], env=env)
    assert result.exit_code == 1
    assert "Error: no report of these jobs is of a DICOM study; use --format fhir" in result.output
