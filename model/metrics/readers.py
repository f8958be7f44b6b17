"""The statistics of a reader study: preference rates with Wilson 95% intervals, errors per report by
kind, and agreement between readers (Cohen's kappa for two, Fleiss' kappa for more).

Pure functions over plain data, so that they are checked against published worked examples.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (Wilson 1927); (0, 0) for n = 0.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage for small n and for
    rates near 0 or 1, which reader studies of a few dozen cases always have.
    """
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None without items, 1.0 when both agree
    on one label throughout (chance agreement 1: no disagreement to measure)."""
    if len(a) != len(b):
        raise ValueError("two raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[label] * cb[label] for label in set(ca) | set(cb)) / (n * n)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa: each item is {label: how many raters chose it}, every item rated by the same number."""
    if not items:
        return None
    raters = sum(items[0].values())
    if raters < 2 or any(sum(i.values()) != raters for i in items):
        raise ValueError("Fleiss' kappa needs the same number (at least 2) of ratings for every item")
    n = len(items)
    labels = {label for i in items for label in i}
    p_label = {label: sum(i.get(label, 0) for i in items) / (n * raters) for label in labels}
    p_items = [(sum(c * c for c in i.values()) - raters) / (raters * (raters - 1)) for i in items]
    observed = sum(p_items) / n
    expected = sum(p * p for p in p_label.values())
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def rate(k: int, n: int) -> dict[str, Any]:
    low, high = wilson(k, n)
    return {"count": k, "of": n, "rate": k / n if n else None, "ci95": [low, high]}


def summarise(sources: Sequence[str], readers: Sequence[str], answers: Mapping[tuple[int, str], str],
              errors: Sequence[tuple[int, str, str, str, bool]], kinds: Sequence[str]) -> dict[str, Any]:
    """Preference rates (overall and per reader), errors per report by kind, and inter-reader agreement.

    `answers`: (case, reader) -> the preferred source or "equivalent"; `errors`: (case, reader, source,
    kind, clinically significant).
    """
    choices = [*sources, "equivalent"]
    n = len(answers)
    preference = {c: rate(sum(1 for v in answers.values() if v == c), n) for c in choices}
    per_reader = {}
    for reader in readers:
        mine = [v for (_, r), v in answers.items() if r == reader]
        per_reader[reader] = {c: rate(sum(1 for v in mine if v == c), len(mine)) for c in choices}
    errs: dict[str, Any] = {}
    for source in sources:
        marked = [e for e in errors if e[2] == source]
        errs[source] = {"reports": n, "total_per_report": len(marked) / n if n else None,
                        "significant_per_report": sum(1 for e in marked if e[4]) / n if n else None,
                        "by_kind": {k: {"per_report": sum(1 for e in marked if e[3] == k) / n if n else None,
                                        "significant": sum(1 for e in marked if e[3] == k and e[4])} for k in kinds}}
    cases = sorted({c for c, _ in answers})
    complete = [c for c in cases if all((c, r) in answers for r in readers)]
    agreement: dict[str, Any] = {"readers": len(readers), "cases_rated_by_all": len(complete)}
    if len(readers) == 2:
        a, b = readers
        agreement.update(statistic="cohen", kappa=cohen_kappa([answers[(c, a)] for c in complete],
                                                              [answers[(c, b)] for c in complete]))
    elif len(readers) > 2:
        agreement.update(statistic="fleiss", kappa=fleiss_kappa(
            [Counter(answers[(c, r)] for r in readers) for c in complete]))
    else:
        agreement.update(statistic=None, kappa=None)
    return {"answers": n, "preference": preference, "per_reader": per_reader, "errors": errs,
            "agreement": agreement}
