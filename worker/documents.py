"""Reports as documents: `xrq export --format sr|fhir` and what `xrq push` sends.

Moves data between db/ (the stored reports and where their files are) and interop/ (the SR and FHIR
builders); neither knows the other. Patient data is read from the study's files here, when a
document is written, and is never logged or stored.

A report that a radiologist signed is exported as its newest signed version (SR VERIFIED, FHIR final),
a report never signed as the machine draft (SR UNVERIFIED, FHIR preliminary): one document per report,
the version of record (docs/conformance.md). `xrq push` and XRQ_PUSH_TO send the draft's SR as the
batch writes it; a sign-off sends the signed SR (worker/review.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from db.deliveries import ReportSource, report_sources
from db.engine import Database
from db.review import Signature, signatures
from interop.documents import ModelInfo, ReportDoc, Signed
from interop.errors import NoDicomIdentityError
from worker import runtime
from worker.settings import Settings

log = logging.getLogger(__name__)
DRAFT_KIND, SIGNED_KIND = "sr", "sr-signed"  # deliveries.kind of a draft's SR and of a signed version's
UNKNOWN_ORGANIZATION = "Unknown organization"  # VerifyingOrganization when the images name no institution


@cache
def xrq_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xrq")
    except PackageNotFoundError:
        return "0+unknown"


def to_doc(src: ReportSource) -> ReportDoc:
    return ReportDoc(report_id=src.report_id, study_uid=src.study_uid, grouping=src.grouping, text=src.text,
                     created_at=src.created_at, model=ModelInfo(src.model_name, src.model_fingerprint, xrq_version()),
                     files=src.files, study_fingerprint=src.study_fingerprint,
                     previous_study_fingerprint=src.previous_study_fingerprint)


def to_signed(signature: Signature, organization: str) -> Signed:
    """A signed version as interop takes it: the user name is the verifying observer's (DICOM PN)."""
    return Signed(text=signature.text, reviewer=signature.author, organization=organization,
                  signed_at=signature.at, version=str(signature.version))


def _organization(headers: Sequence[Any]) -> str:
    """The institution of the study's images: whom the verifying radiologist answers to, as far as xrq knows."""
    for ds in headers:
        name = str(ds.get("InstitutionName") or "").strip()
        if name:
            return name[:64]
    return UNKNOWN_ORGANIZATION


def report_source(db: Database, report_id: int) -> ReportSource:
    """The source of one report (its job's files of its study); NotFoundError when there is none."""
    from sqlalchemy import select

    from db.errors import NotFoundError
    from db.schema import Report

    with db.session() as s:
        row = s.execute(select(Report.job_id, Report.study_id).where(Report.id == report_id)).first()
    if row is None:
        raise NotFoundError(f"no report {report_id}")
    found = [src for src in report_sources(db, [row.job_id], study_ids={row.study_id}) if src.report_id == report_id]
    if not found:
        raise NotFoundError(f"no report {report_id} in job {row.job_id}")
    return found[0]


def signed_srs(src: ReportSource, sigs: Sequence[Signature]) -> list[Any]:
    """The SR of each signed version, oldest first (VERIFIED; predecessors: the draft SR and the earlier
    signed versions' SRs); NoDicomIdentityError for a study whose files are not DICOM."""
    from interop.documents import read_sources
    from interop.sr import signed_sr

    doc = to_doc(src)
    headers = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
    organization = _organization(headers)
    versions = [to_signed(sig, organization) for sig in sigs]
    return [signed_sr(doc, headers, v, versions[:i]) for i, v in enumerate(versions)]


@dataclass
class DocumentExport:
    """What an export wrote: files, and the studies it could not write (uid, reason)."""

    written: int = 0
    reports: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def reports_of(settings: Settings, job_ids: Sequence[int]) -> list[ReportSource]:
    return report_sources(runtime.database(settings.database_url), list(job_ids))


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, fsync, rename: never a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=".xrq-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(sr: Any, f: Any) -> None:
    sr.save_as(f, enforce_file_format=True)


def sr_documents(sources: Sequence[ReportSource], signed: dict[int, list[Signature]] | None = None,
                 ) -> Iterator[tuple[ReportSource, Any, str | None]]:
    """(report, SR dataset or None, why not) for each report: a study without DICOM identity has none.

    The draft's SR, or, for a report in `signed`, the SR of its newest signed version."""
    from interop.documents import read_sources
    from interop.sr import draft_sr, signed_sr

    for src in sources:
        doc = to_doc(src)
        try:
            headers = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
        except NoDicomIdentityError as exc:
            yield src, None, str(exc)
            continue
        sigs = (signed or {}).get(src.report_id)
        if sigs:
            versions = [to_signed(sig, _organization(headers)) for sig in sigs]
            yield src, signed_sr(doc, headers, versions[-1], versions[:-1]), None
        else:
            yield src, draft_sr(doc, headers), None


def fhir_documents(sources: Sequence[ReportSource], signed: dict[int, list[Signature]] | None = None,
                   ) -> Iterator[tuple[ReportSource, Any]]:
    """(report, FHIR DiagnosticReport) for each report; DICOM studies get their patient and study date.
    A report in `signed` is its newest signed version (status final), any other the draft (preliminary)."""
    from interop.documents import read_sources
    from interop.fhir import diagnostic_report

    for src in sources:
        doc = to_doc(src)
        try:
            headers = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
        except NoDicomIdentityError:
            headers = []
        sigs = (signed or {}).get(src.report_id)
        version = to_signed(sigs[-1], _organization(headers)) if sigs else None
        yield src, diagnostic_report(doc, headers, signed=version)


def export_sr(settings: Settings, job_ids: Sequence[int], folder: Path) -> DocumentExport:
    """One SR file per report of the jobs' DICOM studies, named by its SOP Instance UID, in `folder`."""
    result = DocumentExport()
    sources = reports_of(settings, job_ids)
    result.reports = len(sources)
    signed = signatures(runtime.database(settings.database_url), [s.report_id for s in sources])
    for src, sr, why in sr_documents(sources, signed):
        if sr is None:
            result.skipped.append((src.study_uid, why or "no DICOM identity"))
            continue
        _atomic_write(folder / f"{sr.SOPInstanceUID}.dcm", partial(_save, sr))
        result.written += 1
    return result


def export_fhir(settings: Settings, job_ids: Sequence[int], out: Path) -> DocumentExport:
    """One FHIR R4 DiagnosticReport a line (NDJSON) per report of the jobs, validated before written."""
    from interop.fhir import ndjson_line

    result = DocumentExport()
    sources = reports_of(settings, job_ids)
    result.reports = len(sources)
    signed = signatures(runtime.database(settings.database_url), [s.report_id for s in sources])
    lines = [ndjson_line(report) for _, report in fhir_documents(sources, signed)]
    _atomic_write(out, lambda f: f.write("".join(line + "\n" for line in lines)), mode="w")
    result.written = len(lines)
    return result
