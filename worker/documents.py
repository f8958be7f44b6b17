"""Reports as documents: `xrq export --format sr|fhir` and what `xrq push` sends.

Moves data between db/ (the stored reports and where their files are) and interop/ (the SR and FHIR
builders); neither knows the other. Patient data is read from the study's files here, when a
document is written, and is never logged or stored.
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
from interop.documents import ModelInfo, ReportDoc
from interop.errors import NoDicomIdentityError
from worker import runtime
from worker.settings import Settings

log = logging.getLogger(__name__)


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


def sr_documents(sources: Sequence[ReportSource]) -> Iterator[tuple[ReportSource, Any, str | None]]:
    """(report, SR dataset or None, why not) for each report: a study without DICOM identity has none."""
    from interop.documents import read_sources
    from interop.sr import draft_sr

    for src in sources:
        doc = to_doc(src)
        try:
            headers = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
        except NoDicomIdentityError as exc:
            yield src, None, str(exc)
            continue
        yield src, draft_sr(doc, headers), None


def fhir_documents(sources: Sequence[ReportSource]) -> Iterator[tuple[ReportSource, Any]]:
    """(report, FHIR DiagnosticReport) for each report; DICOM studies get their patient and study date."""
    from interop.documents import read_sources
    from interop.fhir import diagnostic_report

    for src in sources:
        doc = to_doc(src)
        try:
            headers = read_sources(doc.files, doc.study_uid if doc.grouping == "dicom" else None)
        except NoDicomIdentityError:
            headers = []
        yield src, diagnostic_report(doc, headers)


def export_sr(settings: Settings, job_ids: Sequence[int], folder: Path) -> DocumentExport:
    """One SR file per report of the jobs' DICOM studies, named by its SOP Instance UID, in `folder`."""
    result = DocumentExport()
    sources = reports_of(settings, job_ids)
    result.reports = len(sources)
    for src, sr, why in sr_documents(sources):
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
    lines = [ndjson_line(report) for _, report in fhir_documents(sources)]
    _atomic_write(out, lambda f: f.write("".join(line + "\n" for line in lines)), mode="w")
    result.written = len(lines)
    return result
