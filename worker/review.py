"""Review actions as a service: the web application calls `submit`, and a sign-off calls `on_signed`.

`on_signed` is the one place where a signed report leaves xrq: with DICOM output configured it is
where the verified Structured Report (VerificationFlag VERIFIED, the reviewer as verifying observer,
the draft SR as predecessor) and the final FHIR DiagnosticReport are produced and queued (the
"DICOM in and out" issue provides the producers; they are wired in here).
"""

from __future__ import annotations

import logging

from db import review
from db.engine import Database
from db.review import Submitted

log = logging.getLogger("xrq.review")


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

    `signed` carries the report id, the study uid, the signed text, the draft, the signer and the time.
    The DICOM SR and FHIR producers of the interop package hook in here; without DICOM output
    configured there is nothing to send.
    """
    log.debug("report %d signed as version %d", signed.report_id, signed.version)
