"""SR and FHIR documents of a report: TID 2000 content, the source's identity, dciodvfy, stable UIDs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from interop.documents import (
    ModelInfo,
    ReportDoc,
    Signed,
    draft_documents,
    read_sources,
    sections,
    signed_fhir,
    signed_sr,
)
from interop.errors import NoDicomIdentityError
from interop.fhir import ndjson_line
from interop.sr import report_text
from tests.conftest import DATA, EXAMPLES
from tests.interop.peers import dciodvfy_errors

RG1 = (DATA / "dicom" / "RG1_UNCR.dcm", DATA / "dicom" / "RG1_J2KR.dcm")
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
MODEL = ModelInfo("tiny", "ab" * 32, "0.1.0")
WHEN = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def doc(text: str = "The lungs are clear. IMPRESSION: No acute disease.", files: tuple[Path, ...] = RG1,
        grouping: str = "dicom", uid: str = RG1_STUDY) -> ReportDoc:
    return ReportDoc(7, uid, grouping, text, WHEN, MODEL, tuple(str(f) for f in files))


def values(ds: pydicom.Dataset) -> dict[str, str]:
    """Concept name -> value (text or UID) of every TEXT and UIDREF item of an SR's tree."""
    found: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if "TextValue" in item or "UID" in item:
            found[name] = str(item.get("TextValue", item.get("UID")))
        found.update(values(item))
    return found


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_draft_sr_is_tid_2000_in_the_source_study_and_passes_dciodvfy(tmp_path: Path) -> None:
    sr, _ = draft_documents(doc())
    assert sr is not None
    path = save(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    source = pydicom.dcmread(RG1[0], stop_before_pixels=True)
    assert back.StudyInstanceUID == RG1_STUDY and back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID and back.AccessionNumber == source.AccessionNumber
    assert back.Modality == "SR" and back.CompletionFlag == "PARTIAL" and back.VerificationFlag == "UNVERIFIED"
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert back.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert report_text(back) == "The lungs are clear. IMPRESSION: No acute disease."
    referenced = {i.ReferencedSOPInstanceUID for e in back.CurrentRequestedProcedureEvidenceSequence
                  for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in RG1}
    tree = values(back)
    assert tree["Device Observer Name"] == "tiny" and tree["Device Observer Serial Number"] == MODEL.fingerprint
    assert tree["Device Observer Model Name"] == "xrq 0.1.0"
    assert tree["Comment"].startswith("Unreviewed machine draft")


def test_sr_uid_is_derived_from_the_report_so_a_resend_replaces() -> None:
    first, _ = draft_documents(doc())
    again, _ = draft_documents(doc(text="Another text of the same report."))
    other_model, _ = draft_documents(ReportDoc(7, RG1_STUDY, "dicom", "x", WHEN, ModelInfo("m", "cd" * 32, "0.1.0"),
                                               tuple(str(f) for f in RG1)))
    assert first is not None and again is not None and other_model is not None
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SOPInstanceUID != other_model.SOPInstanceUID
    assert len(first.SOPInstanceUID) <= 64


def test_signed_sr_is_a_new_verified_instance_with_the_draft_as_predecessor(tmp_path: Path) -> None:
    draft, _ = draft_documents(doc())
    signed = Signed("Clear lungs. IMPRESSION: Normal.", "House^Gregory", "PPTH", WHEN, "3")
    sr = signed_sr(doc(), signed)
    assert dciodvfy_errors(save(sr, tmp_path / "signed.dcm")) == []
    assert draft is not None and sr.SOPInstanceUID != draft.SOPInstanceUID
    assert sr.SeriesInstanceUID == draft.SeriesInstanceUID
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "House^Gregory"
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == draft.SOPInstanceUID
    assert report_text(sr) == "Clear lungs. IMPRESSION: Normal."
    assert "Comment" not in values(sr)
    final = json.loads(ndjson_line(signed_fhir(doc(), signed)))
    assert final["status"] == "final" and final["resultsInterpreter"][0]["display"] == "House Gregory"


def test_fhir_is_a_valid_r4_preliminary_radiology_report_with_the_study_uid() -> None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    _, report = draft_documents(doc())
    line = ndjson_line(report)
    data = json.loads(line)
    DiagnosticReport.model_validate(data)  # round-trips through the R4 model
    assert data["status"] == "preliminary"
    assert data["category"][0]["coding"][0]["code"] == "RAD"
    assert data["identifier"] == [{"system": "urn:dicom:uid", "value": f"urn:oid:{RG1_STUDY}"}]
    assert data["conclusion"] == doc().text
    assert data["contained"][0]["resourceType"] == "Device"
    assert data["subject"]["identifier"]["value"] == "9RG1"
    assert data["effectiveDateTime"] == "2004-08-26"


def test_a_png_study_gets_fhir_and_a_named_error_for_sr() -> None:
    png = doc(files=(EXAMPLES / "CXR25_IM-1024-2001.png",), grouping="iu", uid="25")
    sr, report = draft_documents(png)
    assert sr is None
    data = json.loads(ndjson_line(report))
    assert data["identifier"][0] == {"system": "urn:xrq:study", "value": "25"} and "subject" not in data
    with pytest.raises(NoDicomIdentityError, match="no DICOM identity"):
        read_sources(png.files)


def test_sections_split_findings_and_impression() -> None:
    assert sections("FINDINGS: a. IMPRESSION: b.") == ("a.", "b.")
    assert sections("heart normal.") == ("heart normal.", "")


def test_a_study_whose_files_are_gone_says_so(tmp_path: Path) -> None:
    with pytest.raises(NoDicomIdentityError, match="its files are gone from where they were submitted"):
        read_sources([tmp_path / "gone" / "a.dcm"])
