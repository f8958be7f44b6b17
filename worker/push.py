"""`xrq push` and XRQ_PUSH_TO without the CLI: send reports' SRs to a PACS or a DICOMweb server.

Deliveries are rows (db/deliveries.py): what is delivered to a destination is not sent again; what
failed is recorded with its reason and retried by the backlog. A destination that cannot be reached
stops the push at once: every report not yet delivered is recorded as failed (nothing is lost) and
the caller gets UnreachableError. Patient data is read from the study's files, never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from db import deliveries
from db.deliveries import ReportSource
from db.engine import Database
from db.review import signatures
from interop.errors import DeliveryError, NoDicomIdentityError, UnreachableError
from interop.send import Destination, Sender, parse_destination
from worker import runtime
from worker.documents import DRAFT_KIND, SIGNED_KIND, report_source, reports_of, signed_srs, sr_documents
from worker.settings import Settings

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)
TOKEN_VAR = "XRQ_PUSH_TOKEN"
SEND_TIMEOUT = 30.0  # seconds to connect, and for each answer, before a destination counts as down


@dataclass
class PushResult:
    destination: str
    sent: int = 0
    already: int = 0  # delivered by an earlier push
    failed: int = 0
    skipped: int = 0  # studies without DICOM identity: no SR to send
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"destination": self.destination, "sent": self.sent, "already_delivered": self.already,
                "failed": self.failed, "skipped": self.skipped, "errors": self.errors}


def push_jobs(settings: Settings, job_ids: Sequence[int], to: str) -> PushResult:
    """Push the SRs of the jobs' reports to `to`; raises UnreachableError (after recording) when it is down."""
    dest = parse_destination(to)  # a typo is named before anything is read
    return push_sources(settings, reports_of(settings, job_ids), dest)


def push_sources(settings: Settings, sources: Sequence[ReportSource], dest: Destination) -> PushResult:
    db = runtime.database(settings.database_url)
    result = PushResult(dest.text)
    done = deliveries.delivered(db, dest.text, [s.report_id for s in sources])
    todo = []
    for src, sr, _why in sr_documents(sources):
        if sr is None:
            result.skipped += 1
        elif (src.report_id, sr.SOPInstanceUID) in done:
            result.already += 1
        else:
            todo.append((src.report_id, sr))
    send_documents(settings, db, dest, todo, result, kind=DRAFT_KIND)
    return result


def send_documents(settings: Settings, db: Database, dest: Destination, todo: Sequence[tuple[int, Dataset]],
                   result: PushResult, *, kind: str, timeout: float = SEND_TIMEOUT) -> None:
    """Send (report id, SR) pairs in one association, recording each delivery as `kind`: the one policy of
    every push. A refused SR is a failed row and the rest goes on; a destination that cannot be reached
    records every SR left as failed and raises UnreachableError."""
    if not todo:
        return
    what = "SR(s)" if kind == DRAFT_KIND else "signed SR(s)"
    token = os.environ.get(TOKEN_VAR) or None
    with Sender(dest, calling_aet=settings.listen_aet, token=token, timeout=timeout) as sender:
        for i, (report_id, sr) in enumerate(todo):
            try:
                sender.send(sr)
            except UnreachableError as exc:
                for left_id, left_sr in todo[i:]:  # kept, for `xrq push` again or the backlog
                    deliveries.record(db, report_id=left_id, destination=dest.text, kind=kind,
                                      uid=left_sr.SOPInstanceUID, error=str(exc))
                result.failed += len(todo) - i
                result.errors.append(str(exc))
                log.warning("push to %s stopped: %s (%d %s kept for retry)", dest.text, exc, len(todo) - i, what)
                raise UnreachableError(f"{exc}; {len(todo) - i} {what} not delivered, recorded for retry "
                                       "(`xrq push` again, or the nightly backlog)") from exc
            except DeliveryError as exc:
                deliveries.record(db, report_id=report_id, destination=dest.text, kind=kind,
                                  uid=sr.SOPInstanceUID, error=str(exc))
                result.failed += 1
                result.errors.append(f"report {report_id}: {exc}")
                continue
            deliveries.record(db, report_id=report_id, destination=dest.text, kind=kind,
                              uid=sr.SOPInstanceUID, error=None)
            result.sent += 1


def push_signed(settings: Settings, db: Database, dest: Destination, *,
                versions: Mapping[int, Collection[int]] | None = None,
                uids: Mapping[int, Collection[str]] | None = None, timeout: float = SEND_TIMEOUT) -> PushResult:
    """Send signed versions' SRs (VERIFIED, the draft SR as predecessor) to `dest`, recorded as SIGNED_KIND.

    Which: `versions` (report id -> signed version numbers: a sign-off) and/or `uids` (report id -> the
    SOP Instance UIDs of signed SRs to send again: the backlog's failed rows, rebuilt from their signed
    versions). What is already delivered is not sent again; a study without DICOM identity has no SR
    (skipped, logged once). Raises UnreachableError (after recording) when the destination is down."""
    versions, uids = versions or {}, uids or {}
    result = PushResult(dest.text)
    report_ids = sorted(set(versions) | set(uids))
    sigs = signatures(db, report_ids)
    done = deliveries.delivered(db, dest.text, report_ids)
    todo: list[tuple[int, Dataset]] = []
    for report_id in report_ids:
        mine = sigs.get(report_id, [])
        try:
            srs = signed_srs(report_source(db, report_id), mine)
        except NoDicomIdentityError as exc:
            log.info("report %d is signed; no SR sent to %s: %s", report_id, dest.text, exc)
            result.skipped += 1
            continue
        for sig, sr in zip(mine, srs, strict=True):
            if sig.version not in versions.get(report_id, ()) and sr.SOPInstanceUID not in uids.get(report_id, ()):
                continue
            if (report_id, sr.SOPInstanceUID) in done:
                result.already += 1
            else:
                todo.append((report_id, sr))
    send_documents(settings, db, dest, todo, result, kind=SIGNED_KIND, timeout=timeout)
    return result


def retry_failed(settings: Settings) -> list[PushResult]:
    """The backlog's step: push again, per destination, the jobs of draft SRs that failed, and the very
    signed SRs that failed (rebuilt from their signed versions, never the draft in their place); with
    XRQ_PUSH_TO, also the signed versions that were never sent at all (`deliveries.unsent_signed`)."""
    db = runtime.database(settings.database_url)
    limit = max(settings.max_attempts, 1) * 8
    results = []
    for pending in deliveries.failed(db, max_attempts=limit, kind=DRAFT_KIND):
        try:
            results.append(push_jobs(settings, pending.job_ids, pending.destination))
        except DeliveryError as exc:
            log.warning("retrying deliveries to %s: %s", pending.destination, exc)
            results.append(PushResult(pending.destination, failed=pending.count, errors=[str(exc)]))
    for destination, by_report in deliveries.failed_documents(db, max_attempts=limit, kind=SIGNED_KIND).items():
        try:
            results.append(push_signed(settings, db, parse_destination(destination), uids=by_report))
        except DeliveryError as exc:
            log.warning("retrying signed SRs to %s: %s", destination, exc)
            results.append(PushResult(destination, failed=sum(map(len, by_report.values())), errors=[str(exc)]))
    if settings.push_to:  # sign-offs whose send never started: the process stopped between commit and send
        dest = parse_destination(settings.push_to)
        unsent = deliveries.unsent_signed(db, dest.text, kind=SIGNED_KIND)
        if unsent:
            log.info("%d signed reports have no delivery to %s yet: sending their SRs", len(unsent), dest.text)
            try:
                results.append(push_signed(settings, db, dest, versions=unsent))
            except DeliveryError as exc:  # recorded as failed rows: the next retry finds them
                log.warning("sending signed SRs to %s: %s", dest.text, exc)
                results.append(PushResult(dest.text, failed=sum(map(len, unsent.values())), errors=[str(exc)]))
    return results


def push_reported(settings: Settings, job_id: int, study_ids: Sequence[int]) -> None:
    """XRQ_PUSH_TO: push the reports a batch just wrote; never raises (failures are rows, retried later)."""
    if not settings.push_to or not study_ids:
        return
    try:
        sources = deliveries.report_sources(runtime.database(settings.database_url), [job_id],
                                            study_ids=set(study_ids))
        push_sources(settings, sources, parse_destination(settings.push_to))
    except Exception as exc:  # the batch is written; a delivery problem must not fail it
        log.warning("pushing job %d's new reports to %s: %s", job_id, settings.push_to, exc)
