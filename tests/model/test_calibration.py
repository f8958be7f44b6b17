"""Calibration: Spearman's rho, per-study clinical F1, reliability bins, and the evaluation's figure row."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from model.metrics.calibration import ranks, spearman, study_f1
from model.metrics.evaluation import evaluate


def test_ranks_share_ties_and_spearman_matches_the_textbook() -> None:
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Monotone but not linear: Spearman is 1 where Pearson is not.
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 100, 1000]) == pytest.approx(1.0)
    # The classic worked example (no ties): rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)).
    x, y = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110], [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    d2 = sum((a - b) ** 2 for a, b in zip(ranks(x), ranks(y), strict=True))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (10 * 99)) == pytest.approx(-0.1757575)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_study_f1_over_the_observations() -> None:
    assert study_f1("No acute disease. Lungs are clear.", "The lungs are clear. No acute findings.") == 1.0
    assert study_f1("Small left pleural effusion.", "There is a pleural effusion.") == 1.0
    assert study_f1("Small left pleural effusion.", "The lungs are clear.") == 0.0
    both = study_f1("Pleural effusion and cardiomegaly.", "Cardiomegaly.")
    assert both == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_calibration_sees_good_reports_where_the_model_was_sure(tmp_path: Path) -> None:
    truth = {f"s{i}": ("Small left pleural effusion." if i % 2 else "The lungs are clear. No acute disease.")
             for i in range(12)}
    right = dict(truth)
    wrong = {k: ("The lungs are clear. No acute disease." if i % 2 else "Large right pleural effusion.")
             for i, k in enumerate(truth)}
    # The six surest reports are right, the six least sure wrong.
    hypotheses = {k: (right[k] if i >= 6 else wrong[k]) for i, k in enumerate(truth)}
    confidence: dict[str, float | None] = {k: 0.1 + 0.07 * i for i, k in enumerate(truth)}
    confidence["s0"] = None  # a report stored before confidence was recorded: left out
    result = evaluate(truth, hypotheses, with_meteor=False, confidence=confidence)
    cal = result.calibration
    assert cal is not None and cal.n == 11
    assert cal.spearman_clinical_f1 is not None and cal.spearman_clinical_f1 > 0.8
    assert cal.spearman_bleu_4 is not None and cal.spearman_bleu_4 > 0.5
    assert [b.n for b in cal.bins] == [2, 2, 2, 2, 3]
    assert cal.bins[0].clinical_f1 == 0.0 and cal.bins[-1].clinical_f1 == 1.0
    assert all(a.high <= b.low for a, b in zip(cal.bins, cal.bins[1:], strict=False))
    summary = result.summary()["calibration"]
    assert summary["n_studies"] == 11 and len(summary["bins"]) == 5
    assert math.isclose(summary["spearman_clinical_f1"], cal.spearman_clinical_f1)
    assert evaluate(truth, hypotheses, with_meteor=False).calibration is None

    from model.figures.plots import plot_evaluation

    with_row = Image.open(plot_evaluation(result, tmp_path / "with.png"))
    without = Image.open(plot_evaluation(evaluate(truth, hypotheses, with_meteor=False), tmp_path / "without.png"))
    assert with_row.height == pytest.approx(without.height * 1.5, rel=0.01)  # a third row of panels


def test_auroc_is_the_chance_a_right_report_is_surer_than_a_wrong_one() -> None:
    from model.metrics.calibration import auroc

    assert auroc([0.9, 0.8, 0.3, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.9, 0.8, 0.3, 0.2], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5
    # 3 positives x 2 negatives = 6 pairs; the positive 0.4 loses to the negative 0.6 once: 5/6.
    assert auroc([0.9, 0.7, 0.4, 0.6, 0.1], [True, True, True, False, False]) == pytest.approx(5 / 6)
    assert auroc([0.9, 0.8], [True, True]) is None
