"""How a model's confidence relates to the quality of its reports, so users can choose a triage threshold.

On the studies an evaluation scored, `calibrate` ranks confidence (exp of the mean token
log-probability, `model.inference.confidence`) against each study's BLEU-4 and its clinical F1 (the rule-based
labeller's 14 observations, uncertain counted positive, as `labeller.compare` does, but for one study
at a time). It gives the Spearman rank correlations and a reliability table: the studies split into
equal-count bins by confidence, each bin's mean confidence beside its mean BLEU-4 and clinical F1.
A useful confidence has positive correlations and a rising table: its least sure reports are its worst.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from model.metrics.labeller import OBSERVATIONS, _prf, is_positive, label

BINS = 5  # reliability bins (equal counts); fewer when there are fewer studies


@dataclass(frozen=True)
class ReliabilityBin:
    """Studies whose confidence falls in [low, high]: how many, and their mean confidence and scores."""

    low: float
    high: float
    n: int
    confidence: float
    bleu_4: float
    clinical_f1: float


@dataclass(frozen=True)
class Calibration:
    """Spearman's rho of confidence against per-study BLEU-4 and clinical F1 (None when undefined:
    fewer than 3 studies, or one side constant), over `n` studies, and the reliability bins."""

    n: int
    spearman_bleu_4: float | None
    spearman_clinical_f1: float | None
    bins: list[ReliabilityBin]
    points: list[tuple[float, float, float]]  # (confidence, BLEU-4, clinical F1) per study, for the figure

    def as_dict(self) -> dict[str, object]:
        return {"n_studies": self.n, "spearman_bleu_4": self.spearman_bleu_4,
                "spearman_clinical_f1": self.spearman_clinical_f1, "bins": [asdict(b) for b in self.bins]}


def study_f1(reference: str, hypothesis: str) -> float:
    """Clinical F1 of one report against its reference, pooled over the 14 observations.

    "No Finding" is an observation, so two normal reports agree (1.0) and every study has a positive.
    """
    ref, hyp = label(reference), label(hypothesis)
    tp = fp = fn = 0
    for o in OBSERVATIONS:
        r, h = is_positive(ref[o]), is_positive(hyp[o])
        tp, fp, fn = tp + (r and h), fp + (h and not r), fn + (r and not h)
    return _prf(tp, fp, fn).f1


def calibrate(confidence: Mapping[str, float | None], bleu_4: Mapping[str, float],
              references: Mapping[str, str], hypotheses: Mapping[str, str]) -> Calibration | None:
    """Calibration over the studies that have a confidence and a BLEU-4; None when there are none."""
    ids = sorted(u for u, c in confidence.items() if c is not None and u in bleu_4 and u in hypotheses)
    if not ids:
        return None
    conf = [float(confidence[u]) for u in ids]  # type: ignore[arg-type]
    bleu = [float(bleu_4[u]) for u in ids]
    f1 = [study_f1(references[u], hypotheses[u]) for u in ids]
    return Calibration(len(ids), spearman(conf, bleu), spearman(conf, f1), _bins(conf, bleu, f1),
                       list(zip(conf, bleu, f1, strict=True)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks, so ties are handled); None if undefined."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of one length")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _bins(conf: list[float], bleu: list[float], f1: list[float]) -> list[ReliabilityBin]:
    """Equal-count bins by confidence, least sure first."""
    order = sorted(range(len(conf)), key=conf.__getitem__)
    count = min(BINS, len(order))
    out = []
    for b in range(count):
        members = order[b * len(order) // count:(b + 1) * len(order) // count]
        n = len(members)
        out.append(ReliabilityBin(conf[members[0]], conf[members[-1]], n, sum(conf[i] for i in members) / n,
                                  sum(bleu[i] for i in members) / n, sum(f1[i] for i in members) / n))
    return out


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for telling the positive cases from the others: the chance that
    a random positive scores above a random negative (ties count a half). None without both kinds."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    if not pos or not neg:
        return None
    r = ranks([*pos, *neg])  # Mann-Whitney U from the ranks of the positives
    u = sum(r[: len(pos)]) - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))
