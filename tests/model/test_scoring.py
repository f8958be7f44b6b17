"""Scoring: the published constant baseline reproduces, and our numbers are pycocoevalcap's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

import model.metrics.scoring as scoring
from model.errors import ScoringError
from model.metrics.scoring import CORPUS_KEYS, PER_STUDY_KEYS, most_frequent_report, score
from model.metrics.text import Vocabulary
from tests.conftest import IU_CSV as IU_DIR

REPO = Path(__file__).resolve().parents[2]

TOLERANCE = 0.002

REFS = {
    "a": "The heart is normal in size. The lungs are clear.",
    "b": "Stable cardiomegaly. No pleural effusion or pneumothorax.",
    "c": "There is a small right pleural effusion. Heart size is normal.",
}
HYPS = {
    "a": "The heart is normal in size. The lungs are clear.",
    "b": "The heart is enlarged. No pleural effusion.",
    "c": "Small right pleural effusion.",
}


def need_iu() -> Path:
    """The IU CSV folder shipped in the repository (data/iu)."""
    return IU_DIR


def load_bench() -> Any:
    """bench/reproduce_baseline.py as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(
        "reproduce_baseline", REPO / "bench" / "reproduce_baseline.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    data = need_iu()
    bench = load_bench()
    return bench.reproduce(
        data / "indiana_reports.csv", data / "indiana_projections.csv", data / "r2gen_split.csv"
    )


@pytest.mark.slow
def test_most_frequent_report_baseline_reproduces_the_published_numbers(baseline: dict[str, Any]) -> None:
    scores, published = baseline["scores"], baseline["published"]
    assert scores["meteor_error"] is None, scores["meteor_error"]
    for key, value in published.items():
        assert scores[key] == pytest.approx(value, abs=TOLERANCE), key
    assert scores["n_studies"] == 590
    assert scores["distinct_reports"] == 1
    assert baseline["protocol"]["hypothesis"] == (
        "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear ."
    )


@pytest.mark.slow
def test_scores_equal_pycocoevalcap_called_directly() -> None:
    data = need_iu()
    bench = load_bench()
    from model.datasets.iu import benchmark_findings, benchmark_split, read_iu, split_texts

    split = benchmark_split(data / "r2gen_split.csv")
    findings = benchmark_findings(
        read_iu(data / "indiana_reports.csv", data / "indiana_projections.csv"), split
    )
    train, test = split_texts(findings, split, "train"), split_texts(findings, split, "test")
    hyps = {u: list(train.values())[i % len(train)] for i, u in enumerate(test)}  # varied hypotheses
    ours = score(test, hyps, vocabulary=Vocabulary.from_reports(train.values()), max_reference_tokens=59)
    gts = {i: [r] for i, r in ours.references.items()}
    res = {i: [h] for i, h in ours.hypotheses.items()}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    try:
        meteor_value, meteor_each = meteor.compute_score(gts, res)
    finally:
        scoring._close_meteor(meteor)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    direct = {"bleu_1": bleu[0], "bleu_4": bleu[3], "meteor": meteor_value, "rouge_l": rouge, "cider": cider}
    assert {k: ours.corpus[k] for k in direct} == direct
    first = next(iter(gts))
    assert ours.per_study[first]["bleu_4"] == bleu_each[3][0]
    assert ours.per_study[first]["meteor"] == meteor_each[0]
    assert ours.per_study[first]["rouge_l"] == rouge_each[0]
    assert ours.per_study[first]["cider"] == cider_each[0]
    assert bench.PUBLISHED  # the script's reference numbers stay importable


def test_constant_hypothesis_has_one_distinct_report() -> None:
    result = score(REFS, dict.fromkeys(REFS, "Lungs are clear."), with_meteor=False)
    assert result.distinct_reports == 1
    assert result.distinct_ratio == pytest.approx(1 / 3)


def test_score_shape_and_nltk_keys() -> None:
    result = score(REFS, HYPS, with_meteor=False)
    assert set(result.corpus) == set(CORPUS_KEYS)
    assert set(result.per_study) == set(HYPS)
    assert set(result.per_study["a"]) == set(PER_STUDY_KEYS) - {"meteor"}
    assert result.per_study["a"]["rouge_l"] == pytest.approx(1.0)
    assert result.references["b"] == "stable cardiomegaly . no pleural effusion or pneumothorax ."
    # Same n-gram statistics, same brevity penalty here: pycocoevalcap and NLTK agree closely.
    assert result.corpus["nltk_bleu_1"] == pytest.approx(result.corpus["bleu_1"], abs=1e-6)
    assert result.to_dict()["distinct_reports"] == 3


def test_meteor_runs_here_and_is_a_real_number() -> None:
    result = score(REFS, HYPS)
    if result.meteor_error is not None and "Java" in result.meteor_error:
        pytest.skip(result.meteor_error)
    meteor = result.corpus["meteor"]
    assert result.meteor_error is None and meteor is not None
    assert 0.0 < meteor <= 1.0
    assert result.per_study["a"]["meteor"] == pytest.approx(1.0, abs=0.01)


def test_meteor_without_java_is_unavailable_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring.shutil, "which", lambda name: None)
    result = score(REFS, HYPS)
    assert result.corpus["meteor"] is None
    assert result.meteor_error is not None and "Java" in result.meteor_error
    assert "meteor" not in result.per_study["a"]
    assert result.corpus["bleu_4"] is not None


def test_meteor_with_a_broken_jar_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if scoring.shutil.which("java") is None:
        pytest.skip("no Java here")
    broken = tmp_path / "broken.jar"
    broken.write_bytes(b"not a jar")
    monkeypatch.setattr(scoring.meteor_module, "METEOR_JAR", str(broken))
    result = score(REFS, HYPS)
    assert result.corpus["meteor"] is None
    assert result.meteor_error is not None and "failed" in result.meteor_error


def test_references_are_unk_mapped_and_cut_only_when_asked() -> None:
    vocab = Vocabulary.from_reports(["the heart is normal in size ."] * 3)
    result = score(REFS, HYPS, vocabulary=vocab, max_reference_tokens=4, with_meteor=False)
    assert result.references["a"] == "the heart is normal"
    assert result.references["b"] == "<unk> <unk> . <unk>"
    assert result.hypotheses["c"] == "small right pleural effusion ."  # hypotheses are never mapped or cut


def test_hypothesis_without_truth_or_nothing_at_all_is_an_error() -> None:
    with pytest.raises(ScoringError, match="no ground truth"):
        score(REFS, {**HYPS, "zz": "Clear."}, with_meteor=False)
    with pytest.raises(ScoringError, match="Nothing to score"):
        score(REFS, {}, with_meteor=False)
    # References without a hypothesis are simply not scored.
    assert score(REFS, {"a": HYPS["a"]}, with_meteor=False).n_studies == 1


def test_most_frequent_report_normalises_and_breaks_ties_by_text() -> None:
    train = ["Lungs clear.", "lungs clear", "Heart normal.", "Heart normal.", "", "Zebra."]
    assert most_frequent_report(train) == "heart normal ."  # tie at 2: alphabetical first
    assert most_frequent_report(reversed(train)) == "heart normal ."
    with pytest.raises(ScoringError):
        most_frequent_report(["", "  "])


def test_clinical_macro_leaves_out_findings_no_study_has() -> None:
    """Macro F1 averages the observations some reference is positive for; the rest have no F1 to average."""
    from model.metrics.evaluation import evaluate

    result = evaluate(REFS, HYPS, with_meteor=False)
    per = result.labels.per_observation
    observed = [p for p in per.values() if p.support]
    assert 0 < len(observed) < len(per)
    assert result.labels.macro.f1 == pytest.approx(sum(p.f1 for p in observed) / len(observed))
    assert result.summary()["clinical"]["macro"]["f1"] == result.labels.macro.f1
