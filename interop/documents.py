"""What a report becomes outside xrq: a DICOM SR and a FHIR DiagnosticReport, from plain data.

`ReportDoc` is everything the database knows of a report (no patient identity: xrq stores none);
`read_sources` takes the patient and study from the study's own DICOM files when a document is
written, so names and ids live only in the documents. The two entry points a caller needs:

- `draft_documents(doc)`: the machine draft, SR (UNVERIFIED, PARTIAL) and FHIR (preliminary).
- `signed_sr(doc, signed)` / `signed_fhir(doc, signed)`: a radiologist's signed version, a new SR
  instance (VERIFIED, COMPLETE, the draft SR in its predecessor documents) and a final FHIR report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from interop import fhir, sr
from interop.data import (
    IMAGE_SOP_CLASSES,
    MACHINE_DRAFT_NOTICE,
    ModelInfo,
    ReportDoc,
    Signed,
    read_sources,
    sections,
)
from interop.errors import NoDicomIdentityError

__all__ = ["IMAGE_SOP_CLASSES", "MACHINE_DRAFT_NOTICE", "ModelInfo", "ReportDoc", "Signed", "draft_documents",
           "read_sources", "sections", "signed_fhir", "signed_sr"]

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
