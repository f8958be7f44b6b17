"""UIDs derived from what they name, so that writing or sending a document again replaces it.

Each is a `2.25.` UID (an integer under the UUID arc, PS3.5 B.2) made from a hash of its parts:
the same report always gives the same SR SOP Instance UID, and a PACS that receives it twice keeps one.
"""

from __future__ import annotations

import hashlib

_ROOT = "xrq-sr-v1"


def derived_uid(*parts: object) -> str:
    """A DICOM UID (at most 64 characters) that depends on `parts` only."""
    digest = hashlib.sha256("\x1f".join([_ROOT, *(str(p) for p in parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"  # 128 bits: at most 44 characters


def sr_series_uid(study_instance_uid: str, model_fingerprint: str) -> str:
    """The SR series of one model in one study: every draft (and signed version) of it goes there."""
    return derived_uid("series", study_instance_uid, model_fingerprint)


def sr_instance_uid(study_instance_uid: str, model_fingerprint: str, version: str = "draft",
                    content: str = "") -> str:
    """The SR of a report: `draft` for the machine draft, another name per signed version; `content`
    (the study's content hash) makes a study reported again over more images a new document."""
    return derived_uid("instance", study_instance_uid, model_fingerprint, version, content)


def device_uid(model_fingerprint: str) -> str:
    """The device observer UID of a model (TID 1004)."""
    return derived_uid("device", model_fingerprint)
