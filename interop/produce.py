"""The documents of a report, for a caller that has a `ReportDoc` (interop.documents):

- `draft_documents(doc)`: the machine draft, SR (UNVERIFIED, PARTIAL) and FHIR (preliminary).
- `signed_sr(doc, signed)` / `signed_fhir(doc, signed)`: a radiologist's signed version, a new SR
  instance (VERIFIED, COMPLETE, the draft SR in its predecessor documents) and a final FHIR report.

Above documents, sr and fhir (which import documents' data types), so no module imports one that
imports it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from interop import fhir, sr
from interop.documents import ReportDoc, Signed, read_sources
from interop.errors import NoDicomIdentityError


def draft_documents(doc: ReportDoc) -> tuple[Dataset | None, Any]:
    """The draft's SR (None for a study without DICOM identity) and FHIR DiagnosticReport."""
    try:
        sources = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
    except NoDicomIdentityError:
        return None, fhir.diagnostic_report(doc, [])
    return sr.draft_sr(doc, sources), fhir.diagnostic_report(doc, sources)


def signed_sr(doc: ReportDoc, signed: Signed, earlier: Sequence[Signed] = ()) -> Dataset:
    """The SR of a signed report: a new instance, VERIFIED and COMPLETE, the reviewer as verifying
    observer, the draft SR (and, for an addendum, the `earlier` signed versions' SRs) in its
    predecessor documents."""
    sources = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
    return sr.signed_sr(doc, sources, signed, earlier)


def signed_fhir(doc: ReportDoc, signed: Signed) -> Any:
    """The final FHIR DiagnosticReport of a signed report (the reviewer as results interpreter)."""
    try:
        sources = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
    except NoDicomIdentityError:
        sources = []
    return fhir.diagnostic_report(doc, sources, signed=signed)
