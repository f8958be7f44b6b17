"""How much radiologists changed the drafts: acceptance, word-level edit distance, rejection reasons.

Pure functions (texts in, numbers out) for `xrq evaluate --truth signed`. The field's metrics
(BLEU, ROUGE-L, CIDEr, clinical F1) with the signed text as the reference come from model.metrics.evaluation;
these are the measures a report generator is judged by in practice: how often a radiologist signs the
draft as it is, and how many words they change when they do not.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
# The bins of the edit distance distribution, in words changed: 0, 1-2, 3-5, 6-10, 11-20, 21+.
BINS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 20), (21, None))


def words(text: str) -> list[str]:
    """Lower-case words; punctuation and spacing are not edits a radiologist is measured by."""
    return WORD.findall(text.lower())


def word_edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance over words: the fewest insertions, deletions and substitutions from a to b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        current = [i]
        for j, wb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (wa != wb)))
        previous = current
    return previous[-1]


def unchanged(draft: str, signed: str) -> bool:
    """Signed with no edit: the same words in the same order (spacing and line breaks aside)."""
    return " ".join(draft.split()) == " ".join(signed.split())


def _bin_label(low: int, high: int | None) -> str:
    return str(low) if high == low else f"{low}+" if high is None else f"{low}-{high}"


def _percentile(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (k - low))


@dataclass(frozen=True)
class ReviewOutcome:
    """One reviewed draft: signed (with its signed text) or rejected (with the reason)."""

    uid: str
    draft: str
    state: str  # signed | rejected
    signed: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ReviewStats:
    reviewed: int
    signed: int
    rejected: int
    accepted_unchanged: float | None  # of the signed: the fraction signed as drafted
    edit_distance: dict[str, Any]  # mean, median, p90, max, per-word rate, histogram (words changed)
    per_study: dict[str, int]  # uid -> words changed (signed reports)
    rejection_reasons: list[tuple[str, int]]  # most frequent first

    def as_dict(self) -> dict[str, Any]:
        return {"reviewed": self.reviewed, "signed": self.signed, "rejected": self.rejected,
                "accepted_unchanged": self.accepted_unchanged, "word_edit_distance": self.edit_distance,
                "rejection_reasons": [{"reason": r, "count": n} for r, n in self.rejection_reasons]}


def _reason(text: str) -> str:
    return " ".join(text.split()).rstrip(".").lower()


def review_stats(outcomes: Iterable[ReviewOutcome]) -> ReviewStats:
    items = list(outcomes)
    signed = [o for o in items if o.state == "signed" and o.signed is not None]
    rejected = [o for o in items if o.state == "rejected"]
    distances = {o.uid: word_edit_distance(words(o.draft), words(o.signed or "")) for o in signed}
    values = list(distances.values())
    signed_words = sum(len(words(o.signed or "")) for o in signed)
    histogram = {_bin_label(lo, hi): sum(1 for v in values if v >= lo and (hi is None or v <= hi)) for lo, hi in BINS}
    edit = {"mean": sum(values) / len(values) if values else None,
            "median": _percentile(values, 0.5) if values else None, "p90": _percentile(values, 0.9) if values else None,
            "max": max(values) if values else None,
            "per_signed_word": sum(values) / signed_words if signed_words else None, "histogram": histogram}
    accepted = sum(1 for o in signed if unchanged(o.draft, o.signed or "")) / len(signed) if signed else None
    reasons = Counter(_reason(o.reason or "") or "(no reason)" for o in rejected)
    return ReviewStats(len(signed) + len(rejected), len(signed), len(rejected), accepted, edit, distances,
                       sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
