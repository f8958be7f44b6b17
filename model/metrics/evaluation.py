"""One evaluation: the field's metrics, the clinical labeller, and the checks a template cannot pass.

`evaluate` is what `xrq evaluate` runs once it has gathered texts from the database or a file: it
is pure (texts in, numbers out), so the same function serves the CLI, the Celery task and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from model.metrics.calibration import Calibration, calibrate
from model.metrics.labeller import LabelAgreement, NormalAgreement, compare, normal_agreement
from model.metrics.scoring import Scores, most_frequent_report, score
from model.metrics.text import MAX_REFERENCE_TOKENS, MIN_COUNT, Vocabulary


def reference_text(findings: str, impression: str, kind: str) -> str:
    """The part of a report that is scored: findings (the benchmark), impression, or both joined."""
    if kind == "findings":
        return findings.strip()
    if kind == "impression":
        return impression.strip()
    return " ".join(part.strip() for part in (findings, impression) if part.strip())


@dataclass
class EvaluationResult:
    scores: Scores
    labels: LabelAgreement
    normal: NormalAgreement | None
    protocol: dict[str, Any]
    calibration: Calibration | None = None  # when the reports' confidences are known
    sections: dict[str, Any] | None = None  # the other section of sectioned reports, scored beside (worker/)

    def summary(self) -> dict[str, Any]:
        """Corpus-level numbers as JSON-ready values (per-study scores are in `scores.per_study`)."""
        return {
            **self.scores.to_dict(),
            "clinical": {
                "micro": asdict(self.labels.micro), "macro": asdict(self.labels.macro),
                "per_observation": {k: asdict(v) for k, v in self.labels.per_observation.items()},
            },
            "normal_vs_abnormal": asdict(self.normal) if self.normal else None,
            "calibration": self.calibration.as_dict() if self.calibration else None,
            "sections": self.sections,
            "protocol": self.protocol,
        }


def evaluate(
    references: Mapping[str, str], hypotheses: Mapping[str, str], *,
    train_texts: Iterable[str] | None = None, mesh: Mapping[str, str] | None = None, with_meteor: bool = True,
    on_stage: Callable[[str], None] | None = None, confidence: Mapping[str, float | None] | None = None,
) -> EvaluationResult:
    """Score `hypotheses` against `references` (raw texts keyed by study id) the way the field does.

    With training texts, references keep only words seen at least 3 times in them (others become
    <unk>), as in the benchmark protocol; references are always cut to 59 tokens. `mesh` (study id ->
    MeSH cell) adds normal-vs-abnormal agreement of the generated reports. `on_stage(name)` is called
    as "scoring" (the language metrics) and "labelling findings" (the clinical labeller) begin.
    `confidence` (study id -> the report's confidence) adds how it ranks with per-study BLEU-4 and
    clinical F1 (`model.metrics.calibration`).
    """
    stage = on_stage or (lambda name: None)
    stage("scoring")
    train = list(train_texts or [])
    vocabulary = Vocabulary.from_reports(train, MIN_COUNT) if train else None
    scores = score(references, hypotheses, vocabulary=vocabulary, max_reference_tokens=MAX_REFERENCE_TOKENS,
                   with_meteor=with_meteor)
    stage("labelling findings")
    labels = compare(references, hypotheses)
    normal = None
    if mesh:
        known = {k: v for k, v in hypotheses.items() if mesh.get(k, "").strip()}
        normal = normal_agreement(mesh, known) if known else None
    protocol = {"unk_min_count": MIN_COUNT if vocabulary else None, "vocabulary_size": len(vocabulary or ()),
                "max_reference_tokens": MAX_REFERENCE_TOKENS, "n_train_texts": len(train),
                "tokenizer": "none (R2Gen normalisation, whitespace tokens)", "scorer": "pycocoevalcap"}
    calibration = None
    if confidence:
        bleu_4 = {k: v["bleu_4"] for k, v in scores.per_study.items() if "bleu_4" in v}
        calibration = calibrate(confidence, bleu_4, references, hypotheses)
    return EvaluationResult(scores, labels, normal, protocol, calibration)


def constant_baseline(train_texts: Iterable[str], study_ids: Iterable[str]) -> dict[str, str]:
    """The most frequent normalised training report, emitted for every study."""
    constant = most_frequent_report(train_texts)
    return dict.fromkeys(study_ids, constant)
