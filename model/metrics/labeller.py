"""A small rule-based labeller for the 14 CheXpert observations, for clinical-efficacy checks.

Why rules and not the CheXpert labeller itself: it needs NegBio, a dependency parser and Java models
we cannot ship. This keeps CheXpert's scheme (mention phrases per observation, then negation, then
uncertainty) with regular expressions over clauses, so scores are comparable in spirit, not to the
decimal, with papers that used the real labeller. See `label` for the rules and their limits.

Labels: 1 positive, 0 negative, -1 uncertain, None not mentioned. "No Finding" is 1 when none of the
12 pathologies (everything except No Finding and Support Devices) is positive or uncertain, else 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from model.errors import ScoringError

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
Label = int | None

# Mention patterns, CheXpert's phrase lists (phrases/mention/*.txt) written as regular expressions, with
# abnormal-only wording where CheXpert relies on its parser ("heart size" alone is not cardiomegaly).
_W = r"(?:\s+[\w-]+){0,3}?\s+"  # up to three words in between: "heart is mildly enlarged"
MENTIONS: dict[str, str] = {
    "Enlarged Cardiomediastinum": (
        r"(?:widened|widening of the|enlarged|enlargement of the|prominent) (?:upper |superior )?"
        r"(?:mediastinum|(?:cardio)?mediastinal (?:silhouette|contour|shadow)s?)"
        r"|mediastinal (?:widening|enlargement|prominence)"
        rf"|(?:mediastinum|(?:cardio)?mediastinal (?:silhouette|contour)s?){_W}(?:widened|enlarged|prominent)"
    ),
    "Cardiomegaly": (
        r"cardiomegaly|cardiac enlargement|enlarged (?:heart|cardiac (?:silhouette|contour|shadow|size))"
        r"|enlargement of the (?:heart|cardiac silhouette)"
        rf"|(?:heart|cardiac (?:silhouette|contour|shadow|size)){_W}(?:enlarged|increased|large)\b"
    ),
    "Lung Opacity": (
        r"opaci\w*|infiltrat\w*|air ?space (?:disease|process)|interstitial (?:markings?|pattern|prominence"
        r"|lung disease|disease|changes)|reticula\w*|increased density|decreased translucency"
        r"|(?<!pleural )(?<!pleural parenchymal )scar(?:s|ring)?\b|peribronchial (?:thickening|cuffing)"
    ),
    "Lung Lesion": (
        r"(?<!soft tissue )mass(?:es)?\b(?! effect)|mass-?like|nodul\w*|\blump|cavitary lesion|carcinoma"
        r"|neoplasm|tumou?r|metasta\w*|malignan\w*"
    ),
    "Edema": (
        r"(?<!soft tissue )edema|heart failure|\bchf\b|(?:vascular|venous|pulmonary) congestion|congestive"
        r"|indistinctness|vascular prominence|volume overload"
    ),
    "Consolidation": r"consolidat\w*",
    "Pneumonia": r"pneumonia|pneumonitis|infection|infectious(?: process)?",
    "Atelectasis": r"atelecta\w*|collapse",
    "Pneumothorax": r"pneumothora\w*|pleural air\b",
    "Pleural Effusion": r"(?<!pericardial )(?<!joint )effusions?|pleural fluid",
    "Pleural Other": (
        r"pleural thickening|fibrothorax|(?<!cystic )fibrosis|pleural (?:parenchymal )?scar\w*"
        r"|pleuro-?(?:parenchymal|pericardial) scar\w*|pleural (?:plaque|calcification)s?"
    ),
    "Fracture": r"fractur\w*",
    SUPPORT_DEVICES: (
        r"pacemaker|defibrillator|\ba?icd\b|catheter|\bpicc\b|\bport\b|port-a-cath|\btubes?\b"
        r"|tracheostomy|(?:central|venous|jugular|\bij|subclavian|arterial|dialysis) line|\bstents?\b"
        r"|\bclips?\b|sternotomy|\bwires?\b|hardware|prosthe\w+|valve (?:replacement|prosthesis)|\bdrains?\b"
        r"|\bleads\b|\bcoils?\b|ivc filter|generator|\bdevices?\b"
    ),
}
OBSERVATIONS: tuple[str, ...] = (NO_FINDING, *MENTIONS)
PATHOLOGIES = tuple(o for o in MENTIONS if o != SUPPORT_DEVICES)

# Explicitly normal wording, read as a negative mention ("The heart is normal in size" -> Cardiomegaly 0).
_NORMAL = r"(?:normal|within normal limits|unremarkable|not enlarged)"
NORMAL_PHRASES: dict[str, str] = {
    "Cardiomegaly": rf"(?:heart|cardiac (?:silhouette|size|contour))(?:\s+[\w-]+){{0,4}}?\s+{_NORMAL}"
    r"|normal (?:heart|cardiac) (?:size|silhouette)",
    "Enlarged Cardiomediastinum": rf"(?:cardio)?mediastin\w*(?:\s+[\w-]+){{0,4}}?\s+{_NORMAL}"
    r"|normal (?:cardio)?mediastin\w*",
    "Lung Opacity": r"\blungs?(?:\s+[\w-]+){0,3}?\s+clear\b|clear lungs",
}

# Cues, NegBio-style. Negation must come before the mention in its clause (or be one of the
# post-mention forms); uncertainty counts before the mention, or after it in the post forms.
UNCERTAIN_STRONG = re.compile(
    r"\b(?:cannot|can not|could not|not) (?:be )?(?:excluded|exclude|ruled out|rule out)\b"
)
NEGATION_PRE = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|resolution of|resolved|removal of"
    r"|rather than|nor)\b"
)
NEGATION_POST = re.compile(
    r"\b(?:(?:has|have|had) (?:\w+ )?resolved|resolved|absent|removed|no longer (?:seen|present|visible)"
    r"|(?:is|are|was|were) not (?:seen|identified|present|visualized|demonstrated|evident|appreciated))\b"
)
PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without) (?:significant |definite |appreciable )?(?:interval )?(?:change|increase)\b"
    r"|\bnot (?:significantly )?changed\b|\bnot only\b|\bnot necessarily\b"
)
UNCERTAIN_PRE = re.compile(
    r"\b(?:may|might|could|possible|possibly|possibility|probable|probably|likely|questionable|question"
    r"|suspicious|suspected|suspect|concerning|concern|suggest|suggests|suggesting|suggestive|versus|vs"
    r"|differential|consider|borderline|equivocal|indeterminate|presumed|presumably|either|rule out"
    r"|exclude)\b"
)
UNCERTAIN_POST = re.compile(
    r"\b(?:versus|vs|(?:is|are) (?:possible|likely|suspected|questionable|favored|probable))\b|\?"
)
# Where a negation's scope ends inside a sentence: contrast words, "with", and a comma or "and" that
# starts a new statement ("No pneumothorax, the heart is enlarged").
SCOPE_BREAK = re.compile(
    r"\b(?:but|however|although|though|except|otherwise|aside from|apart from|whereas|while|with)\b"
    r"|,\s*(?=(?:there|the|a|an|stable|mild|mildly|moderate|moderately|severe|new|persistent|again"
    r"|unchanged|increased)\b)|\band (?=(?:there|the)\b)"
)
SENTENCE_BREAK = re.compile(r"(?<=[.!?;])\s+|\.(?=[a-z])|\n+")


def clauses(report: str) -> list[str]:
    """Lower-cased sentences of `report`, each cut at the points where a negation's scope ends."""
    out: list[str] = []
    for sentence in SENTENCE_BREAK.split(report.lower()):
        parts = SCOPE_BREAK.split(sentence)
        out.extend(p.strip(" .,;") for p in parts if p and p.strip(" .,;"))
    return out


def _mention_label(clause: str, end: int) -> int:
    """1, 0 or -1 for the mention ending at clause[end], from the cues around it."""
    before, after = clause[:end], clause[end:]  # `before` keeps the mention: "heart is not enlarged"
    if UNCERTAIN_STRONG.search(clause):
        return -1
    if NEGATION_PRE.search(PSEUDO_NEGATION.sub(" ", before)) or NEGATION_POST.search(after):
        return 0
    if UNCERTAIN_PRE.search(before) or UNCERTAIN_POST.search(after):
        return -1
    return 1


def _aggregate(labels: list[int]) -> Label:
    """CheXpert's rule across mentions: any positive wins, then uncertain, then negative."""
    for value in (1, -1, 0):
        if value in labels:
            return value
    return None


_MENTION_RE = {name: re.compile(p) for name, p in MENTIONS.items()}
_NORMAL_RE = {name: re.compile(p) for name, p in NORMAL_PHRASES.items()}


def label(report: str) -> dict[str, Label]:
    """The 14 CheXpert labels of one report (any text: findings, impression, or both).

    Each mention is labelled within its clause: uncertain if a strong cue ("cannot be excluded") is
    anywhere in the clause; else negative if a negation cue ("no", "without", "negative for", "free
    of", "clear of", "resolved"...) comes before it or a post form ("has resolved", "is not seen")
    after it; else uncertain if an uncertainty cue ("may", "possible", "suggest", "likely", "versus",
    ...) comes before it or "versus"/"is likely" after it; else positive. Limits: no syntax, so a cue
    reaches every mention after it in the clause, lists are not told from new statements except by
    the breaks in SCOPE_BREAK, and findings outside CheXpert's 14 (granulomas, degenerative spine,
    emphysema) are not labelled, so such reports can still be "No Finding".
    """
    found: dict[str, list[int]] = {name: [] for name in MENTIONS}
    for clause in clauses(report):
        for name, pattern in _MENTION_RE.items():
            found[name].extend(_mention_label(clause, m.end()) for m in pattern.finditer(clause))
        for name, pattern in _NORMAL_RE.items():
            if pattern.search(clause):
                found[name].append(0)
    labels: dict[str, Label] = {name: _aggregate(values) for name, values in found.items()}
    abnormal = any(labels[p] in (1, -1) for p in PATHOLOGIES)
    return {NO_FINDING: 0 if abnormal else 1, **labels}


def is_positive(value: Label) -> bool:
    """The binary reading used for agreement: uncertain counts as positive (the common U-Ones rule)."""
    return value in (1, -1)


@dataclass(frozen=True)
class PRF:
    """Precision, recall and F1 of one observation (or an average), with its reference positives."""

    precision: float
    recall: float
    f1: float
    support: int = 0


def _prf(tp: int, fp: int, fn: int) -> PRF:
    """Scores from counts; a ratio with a zero denominator is 0 (scikit-learn's zero_division=0)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1, tp + fn)


@dataclass(frozen=True)
class LabelAgreement:
    """How well generated reports' labels match the references' labels, over the 14 observations.

    Micro averages pool the counts of all 14. Macro averages are the plain mean over the
    observations that some reference is positive for: an observation with no positive study has no
    recall and no F1 to speak of (its per-observation entry has support 0 and scores 0), and
    counting it as 0 would pull the mean down for a property of the test set, not of the reports.
    With no positive observation at all the macro scores are 0.
    """

    per_observation: dict[str, PRF]
    micro: PRF
    macro: PRF
    n_studies: int


def compare(references: Mapping[str, str], hypotheses: Mapping[str, str]) -> LabelAgreement:
    """Label both sides of every study in `hypotheses` and score hypothesis labels against reference.

    Uncertain (-1) counts as positive on both sides (see `is_positive`); negative and not mentioned
    are both "not positive".
    """
    ids = _checked_ids(references, hypotheses)
    counts = {o: [0, 0, 0] for o in OBSERVATIONS}  # tp, fp, fn
    for i in ids:
        ref, hyp = label(references[i]), label(hypotheses[i])
        for o in OBSERVATIONS:
            r, h = is_positive(ref[o]), is_positive(hyp[o])
            counts[o][0] += r and h
            counts[o][1] += h and not r
            counts[o][2] += r and not h
    per = {o: _prf(*c) for o, c in counts.items()}
    tp, fp, fn = (sum(c[k] for c in counts.values()) for k in range(3))
    observed = [p for p in per.values() if p.support]
    n = len(observed) or 1
    macro = PRF(
        sum(p.precision for p in observed) / n,
        sum(p.recall for p in observed) / n,
        sum(p.f1 for p in observed) / n,
        tp + fn,
    )
    return LabelAgreement(per, _prf(tp, fp, fn), macro, len(ids))


def _checked_ids(truth: Mapping[str, str], hypotheses: Mapping[str, str]) -> list[str]:
    """Sorted ids of `hypotheses`, all of which must have ground truth."""
    if not hypotheses:
        raise ScoringError("Nothing to compare: no hypotheses were given.")
    missing = sorted(set(hypotheses) - set(truth))
    if missing:
        raise ScoringError(f"{len(missing)} studies have no ground truth, e.g. {missing[0]!r}.")
    return sorted(hypotheses)


def is_normal(mesh: str) -> bool:
    """True when an IU MeSH cell says the study is normal (exactly "normal", any case or padding)."""
    return mesh.strip().lower() == "normal"


@dataclass(frozen=True)
class NormalAgreement:
    """Predicted normal (labeller says No Finding) against MeSH normal, "normal" as the positive class."""

    n_studies: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    kappa: float
    counts: dict[str, int]


def normal_agreement(mesh: Mapping[str, str], reports: Mapping[str, str]) -> NormalAgreement:
    """Agreement of `label(report)["No Finding"]` with `is_normal(mesh)` over the studies in `reports`.

    MeSH terms are free labels for the whole study (findings and impression), so pass the same text
    the MeSH annotator saw when checking the labeller itself.
    """
    ids = _checked_ids(mesh, reports)
    c = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for i in ids:
        truth, pred = is_normal(mesh[i]), label(reports[i])[NO_FINDING] == 1
        c[("t" if truth == pred else "f") + ("p" if pred else "n")] += 1
    n = len(ids)
    prf = _prf(c["tp"], c["fp"], c["fn"])
    accuracy = (c["tp"] + c["tn"]) / n
    p_yes = ((c["tp"] + c["fp"]) / n) * ((c["tp"] + c["fn"]) / n)
    p_no = ((c["tn"] + c["fn"]) / n) * ((c["tn"] + c["fp"]) / n)
    chance = p_yes + p_no
    kappa = (accuracy - chance) / (1 - chance) if chance < 1 else 1.0
    return NormalAgreement(n, accuracy, prf.precision, prf.recall, prf.f1, kappa, c)
