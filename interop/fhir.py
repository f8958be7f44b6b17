"""FHIR R4 DiagnosticReports of xrq's reports, built and validated with fhir.resources' R4B models
(fhir.resources 8 defaults to R5; R4B's DiagnosticReport is R4's, which is what EHRs take).

One resource per report: status preliminary (a draft) or final (signed), the radiology category,
LOINC 18748-4, the StudyInstanceUID as an identifier (`urn:dicom:uid`; xrq's study uid for a study
without DICOM identity), the text as conclusion and as a text/plain presentedForm, and the model as
a contained Device referenced by the extension `DEVICE_EXTENSION` (R4's DiagnosticReport has no
device element). The patient (identifier and name) comes from the source files, never the database.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom.dataset import Dataset

from interop.data import MACHINE_DRAFT_NOTICE, ReportDoc, Signed

DEVICE_EXTENSION = "urn:xrq:fhir:StructureDefinition:generated-by"
_RAD = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
_LOINC = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}


def resource_id(doc: ReportDoc, version: str) -> str:
    """A stable id: the same report (and version) always gets the same resource id."""
    key = f"{doc.study_uid}|{doc.model.fingerprint}|{version}"
    return "xrq-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def _instant(when: datetime) -> str:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def _study_datetime(ds: Dataset) -> str | None:
    date = str(ds.get("StudyDate") or "")
    if len(date) != 8 or not date.isdigit():
        return None
    return f"{date[:4]}-{date[4:6]}-{date[6:]}"


def _subject(ds: Dataset) -> dict[str, Any] | None:
    patient_id = str(ds.get("PatientID") or "").strip()
    if not patient_id:
        return None
    subject: dict[str, Any] = {"identifier": {"value": patient_id}}
    issuer = str(ds.get("IssuerOfPatientID") or "").strip()
    if issuer:
        subject["identifier"]["system"] = f"urn:xrq:issuer:{issuer}"
    name = str(ds.get("PatientName") or "").replace("^", " ").strip()
    if name:
        subject["display"] = name
    return subject


def diagnostic_report(doc: ReportDoc, sources: Sequence[Dataset], *, signed: Signed | None = None) -> DiagnosticReport:
    """The report as a validated R4 DiagnosticReport (fhir.resources raises on anything invalid)."""
    text = signed.text if signed is not None else doc.text
    version = "draft" if signed is None else f"signed:{signed.version}"
    if sources:
        identifier = {"system": "urn:dicom:uid", "value": f"urn:oid:{sources[0].StudyInstanceUID}"}
    else:
        identifier = {"system": "urn:xrq:study", "value": doc.study_uid}
    device = {
        "resourceType": "Device", "id": "model",
        "identifier": [{"system": "urn:xrq:model-fingerprint", "value": doc.model.fingerprint}],
        "deviceName": [{"name": doc.model.name, "type": "model-name"}],
        "manufacturer": "xrq", "version": [{"value": doc.model.xrq_version}],
    }
    body: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": resource_id(doc, version),
        "contained": [device],
        "extension": [{"url": DEVICE_EXTENSION, "valueReference": {"reference": "#model"}}],
        "identifier": [identifier],
        "status": "final" if signed is not None else "preliminary",
        "category": [{"coding": [_RAD]}],
        "code": {"coding": [_LOINC], "text": "Chest X-ray report"},
        "issued": _instant(signed.signed_at if signed is not None else doc.created_at),
        "conclusion": text,
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en-US",
                           "data": base64.b64encode(text.encode()).decode("ascii"),
                           "title": "Signed report" if signed is not None else "Machine draft report"}],
    }
    if signed is None:
        body["text"] = {"status": "generated", "div": _div(MACHINE_DRAFT_NOTICE.format(
            model=doc.model.name, version=doc.model.xrq_version))}
    else:
        body["resultsInterpreter"] = [{"display": signed.reviewer.replace("^", " ").strip()}]
    if sources:
        subject = _subject(sources[0])
        if subject is not None:
            body["subject"] = subject
        effective = _study_datetime(sources[0])
        if effective is not None:
            body["effectiveDateTime"] = effective
    return DiagnosticReport.model_validate(body)


def _div(text: str) -> str:
    from html import escape

    return f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{escape(text)}</p></div>'


def ndjson_line(report: DiagnosticReport) -> str:
    """One resource as one line of FHIR NDJSON (bulk data format)."""
    return report.model_dump_json(exclude_none=True, by_alias=True)
