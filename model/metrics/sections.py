"""Report sections: findings and impression, written by one model with section markers.

A model trained with `--text both` learns targets like `FINDINGS: The heart is normal. IMPRESSION: No
acute disease.`, so its reports carry the markers and can be split back: a report row stores the
whole text (`report`) and each section apart (`findings`, `impression`). A report without markers
(a model trained on one section) has no sections: `split_sections` gives None for both, and the
whole text is what it is.

The markers are plain upper-case words with a colon: IU reports never contain them, any tokenizer
writes them, and the attention's sentence splitter (`model.inference.attention.sentence_spans`) ends a sentence
at the colon, so each marker is a "sentence" of its own there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FINDINGS = "FINDINGS:"
IMPRESSION = "IMPRESSION:"
_MARKER = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class Sections:
    findings: str | None
    impression: str | None

    def record(self) -> dict[str, str | None]:
        return {"findings": self.findings, "impression": self.impression}


def join_sections(findings: str, impression: str) -> str:
    """The training target of `--text both`: each non-empty section after its marker, whitespace collapsed."""
    parts = [f"{marker} {' '.join(text.split())}" for marker, text in ((FINDINGS, findings), (IMPRESSION, impression))
             if text.strip()]
    return " ".join(parts)


def split_sections(report: str) -> Sections:
    """A report's sections by its markers; None for a section it does not have (both, without markers).

    Text before the first marker is dropped (a well-trained model writes none); a marker repeated
    joins its sections' texts. An empty section (a marker followed by nothing) is "".
    """
    found = list(_MARKER.finditer(report))
    if not found:
        return Sections(None, None)
    texts: dict[str, list[str]] = {}
    for k, match in enumerate(found):
        end = found[k + 1].start() if k + 1 < len(found) else len(report)
        texts.setdefault(match.group(1).upper(), []).append(" ".join(report[match.end():end].split()))
    findings, impression = texts.get("FINDINGS"), texts.get("IMPRESSION")
    return Sections(" ".join(t for t in findings if t) if findings is not None else None,
                    " ".join(t for t in impression if t) if impression is not None else None)


def without_markers(report: str) -> str:
    """The report's text with its markers removed: what `--text both` scores against findings + impression."""
    return " ".join(_MARKER.sub(" ", report).split())


def section_text(report: str, kind: str) -> str:
    """The part of a generated report scored against the ground truth's `kind` ("findings", "impression",
    "both"): that section when the report has sections, the whole text (markers dropped) otherwise."""
    sections = split_sections(report)
    if kind in ("findings", "impression") and sections != Sections(None, None):
        return getattr(sections, kind) or ""  # a sectioned report without that section says nothing of it
    return without_markers(report)
