"""Review actions as a service: the web application calls `submit`, and a sign-off calls `on_signed`.

`on_signed` is the one place where a signed report leaves xrq. With DICOM output configured
(XRQ_PUSH_TO, the setting the batch path pushes drafts with) it builds the signed version's SR (a new
instance, VerificationFlag VERIFIED, the reviewer as verifying observer, the draft SR in its
predecessor documents) and sends it, recording the delivery as `sr-signed`. The sign-off is committed
before anything is sent and never waits on, or fails with, a delivery: a PACS that is down leaves a
failed delivery row, which the backlog (`xrq backlog`, nightly) sends again; a process stopped between
the commit and the send leaves a signed version with no row at all, which the backlog finds from the
sign-off itself (`db.deliveries.unsent_signed`) and sends. The final FHIR
DiagnosticReport of a signed report is what `xrq export --format fhir` writes for it.
"""

from __future__ import annotations

import logging

from db import review
from db.engine import Database
from db.review import Submitted

log = logging.getLogger("xrq.review")
# The sign-off's request waits for its SR at most this long per step (connect, each answer): a PACS that
# does not answer makes a failed delivery row after seconds, not a reviewer waiting on a spinner.
SEND_TIMEOUT = 10.0


def submit(db: Database, report_id: int, *, base_version: int, action: str, text: str, author_id: int,
           reason: str | None = None) -> Submitted:
    """Record a save, sign-off or rejection (db.review.submit); a sign-off or addendum then goes out."""
    done = review.submit(db, report_id, base_version=base_version, action=action, text=text,
                         author_id=author_id, reason=reason)
    log.info("report %d: %s by %s (version %d)", done.report_id, done.action, done.author, done.version)
    if done.state == "signed":
        on_signed(db, done)
    return done


def on_signed(db: Database, signed: Submitted) -> None:
    """Called once per signed version (a sign-off or an addendum), after it is committed.

    With XRQ_PUSH_TO set, sends that version's SR there, in the request's own thread (the web
    application runs it off its event loop), waiting at most SEND_TIMEOUT per step. Never raises:
    whatever goes wrong is a delivery row (failed, retried by the backlog) or a log line, and the
    sign-off stands.
    """
    from worker.settings import Settings

    try:
        settings = Settings.from_env()
        destination = settings.push_to
        if not destination:
            log.debug("report %d signed as version %d; no DICOM output configured", signed.report_id,
                      signed.version)
            return
        from interop.send import parse_destination
        from worker.push import push_signed

        result = push_signed(settings, db, parse_destination(destination),
                             versions={signed.report_id: {signed.version}}, timeout=SEND_TIMEOUT)
        if result.sent:
            log.info("report %d: signed SR (version %d) sent to %s", signed.report_id, signed.version,
                     destination)
    except Exception as exc:  # the sign-off is stored; a delivery problem must not undo or fail it
        log.warning("report %d: the signed SR (version %d) was not delivered: %s (a failed delivery is retried "
                    "by the backlog)",
                    signed.report_id, signed.version, exc)
