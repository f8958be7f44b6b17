"""The plain data documents are built from: a stored report (`ReportDoc`), its model, a signature,
the image classes xrq reports, and the source files' DICOM headers (`read_sources`).

No patient identity here: xrq stores none; `read_sources` reads it from the study's own files when a
document is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from interop.errors import NoDicomIdentityError

MACHINE_DRAFT_NOTICE = ("Unreviewed machine draft written by {model} (xrq {version}): not a signed report; "
                        "a radiologist must review it before any clinical use.")

# The image storage classes xrq reports (and `xrq listen` accepts): CR, DX for presentation and for
# processing, and the secondary capture classes a PACS stores scanned or converted radiographs as.
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}


@dataclass(frozen=True)
class ModelInfo:
    """The model that wrote a report: the SR's device observer and the FHIR Device."""

    name: str
    fingerprint: str
    xrq_version: str


@dataclass(frozen=True)
class ReportDoc:
    """A stored report, as plain data: what the database holds, and where the study's files are."""

    report_id: int
    study_uid: str  # xrq's uid of the study: the StudyInstanceUID for DICOM studies
    grouping: str  # dicom | iu | folder | image | pattern
    text: str
    created_at: datetime
    model: ModelInfo
    files: tuple[str, ...] = ()  # the study's image files as submitted (or in the listener's inbox)
    study_fingerprint: str = ""  # xrq's content hash of the study: a study grown by a late image is new
    previous_study_fingerprint: str | None = None  # the same study's earlier content reported by this model


@dataclass(frozen=True)
class Signed:
    """A radiologist's signature of a report version (what the review application records)."""

    text: str  # the signed text (the draft, corrected or not)
    reviewer: str  # the verifying observer, as a DICOM person name: Family^Given
    organization: str  # the verifying organisation
    signed_at: datetime
    version: str  # the signed version's own name (its id in the review app): the SR's UID derives from it


def sections(text: str) -> tuple[str, str]:
    """(findings, impression) of a report text: an `IMPRESSION:` heading splits them, when there is one."""
    body = text.strip()
    upper = body.upper()
    at = upper.find("IMPRESSION:")
    if at < 0:
        findings = body
        impression = ""
    else:
        findings, impression = body[:at].strip(), body[at + len("IMPRESSION:"):].strip()
    if findings.upper().startswith("FINDINGS:"):
        findings = findings[len("FINDINGS:"):].strip()
    return findings, impression


def read_sources(files: Sequence[str | os.PathLike[str]], study_instance_uid: str | None = None) -> list[Dataset]:
    """The headers of the DICOM image files among `files` (one study's), in the order given.

    Files that are not DICOM (PNG, JPEG) or belong to another study are left out; NoDicomIdentityError
    when none is left: such a study can have a FHIR report, not an SR.
    """
    headers: list[Dataset] = []
    missing = 0
    for path in files:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except OSError:
            missing += 1
            continue
        except (pydicom.errors.InvalidDicomError, ValueError, EOFError):
            continue
        uid = ds.get("StudyInstanceUID")
        if not uid or not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
            continue
        if study_instance_uid is not None and uid != study_instance_uid:
            continue
        headers.append(ds)
    if not headers and files and missing == len(files):
        raise NoDicomIdentityError(f"its files are gone from where they were submitted ({Path(files[0]).parent}): "
                                   "an SR copies the patient and study from them; put them back to write one")
    if not headers:
        names = ", ".join(Path(p).name for p in list(files)[:3]) or "no files"
        raise NoDicomIdentityError(
            f"its files have no DICOM identity ({names}): an SR belongs in a DICOM study; "
            "export it as FHIR instead")
    first = headers[0].StudyInstanceUID
    return [h for h in headers if h.StudyInstanceUID == first]
