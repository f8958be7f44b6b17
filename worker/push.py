"""`xrq push` and XRQ_PUSH_TO without the CLI: send reports' SRs to a PACS or a DICOMweb server.

Deliveries are rows (db/deliveries.py): what is delivered to a destination is not sent again; what
failed is recorded with its reason and retried by the backlog. A destination that cannot be reached
stops the push at once: every report not yet delivered is recorded as failed (nothing is lost) and
the caller gets UnreachableError. Patient data is read from the study's files, never logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from db import deliveries
from db.deliveries import ReportSource
from interop.errors import DeliveryError, UnreachableError
from interop.send import Destination, Sender, parse_destination
from worker import runtime
from worker.documents import reports_of, sr_documents
from worker.settings import Settings

log = logging.getLogger(__name__)
TOKEN_VAR = "XRQ_PUSH_TOKEN"


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
            todo.append((src, sr))
    if not todo:
        return result
    with Sender(dest, calling_aet=settings.listen_aet, token=os.environ.get(TOKEN_VAR) or None) as sender:
        for i, (src, sr) in enumerate(todo):
            try:
                sender.send(sr)
            except UnreachableError as exc:
                for left, left_sr in todo[i:]:  # kept, for `xrq push` again or the backlog
                    deliveries.record(db, report_id=left.report_id, destination=dest.text, kind="sr",
                                      uid=left_sr.SOPInstanceUID, error=str(exc))
                result.failed += len(todo) - i
                result.errors.append(str(exc))
                log.warning("push to %s stopped: %s (%d SR(s) kept for retry)", dest.text, exc, len(todo) - i)
                raise UnreachableError(f"{exc}; {len(todo) - i} SR(s) not delivered, recorded for retry "
                                       "(`xrq push` again, or the nightly backlog)") from exc
            except DeliveryError as exc:
                deliveries.record(db, report_id=src.report_id, destination=dest.text, kind="sr",
                                  uid=sr.SOPInstanceUID, error=str(exc))
                result.failed += 1
                result.errors.append(f"report {src.report_id}: {exc}")
                continue
            deliveries.record(db, report_id=src.report_id, destination=dest.text, kind="sr",
                              uid=sr.SOPInstanceUID, error=None)
            result.sent += 1
    return result


def retry_failed(settings: Settings) -> list[PushResult]:
    """The backlog's step: push again, per destination, the jobs of deliveries that failed."""
    db = runtime.database(settings.database_url)
    results = []
    for pending in deliveries.failed(db, max_attempts=max(settings.max_attempts, 1) * 8):
        try:
            results.append(push_jobs(settings, pending.job_ids, pending.destination))
        except DeliveryError as exc:
            log.warning("retrying deliveries to %s: %s", pending.destination, exc)
            results.append(PushResult(pending.destination, failed=pending.count, errors=[str(exc)]))
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
