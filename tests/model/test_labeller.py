"""The rule-based CheXpert-style labeller, on real sentences from the IU reports (copied verbatim)."""

from __future__ import annotations

import pytest

from model.errors import ScoringError
from model.metrics.labeller import (
    NO_FINDING,
    OBSERVATIONS,
    Label,
    clauses,
    compare,
    is_normal,
    is_positive,
    label,
    normal_agreement,
)
from tests.conftest import IU_CSV as IU_DIR

# (sentence from indiana_reports.csv, the labels it must get; every other observation is None,
# except No Finding, which is checked separately where given).
CASES: list[tuple[str, dict[str, Label]]] = [
    # negation
    ("No pneumothorax or pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0}),
    ("There is no vascular congestion or edema.", {"Edema": 0}),
    ("Mild cardiomegaly without pulmonary edema.", {"Cardiomegaly": 1, "Edema": 0}),
    (
        "Negative for pneumothorax, pleural effusion or focal airspace consolidation.",
        {"Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0},
    ),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": 0}),
    (
        "The lungs are clear of focal airspace disease, pneumothorax, or pleural effusion.",
        {"Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0},
    ),
    ("No evidence of displaced rib fractures.", {"Fracture": 0}),
    ("Previously seen left pleural effusion has resolved.", {"Pleural Effusion": 0}),
    ("The previously visualized bilateral pneumothoraces have resolved.", {"Pneumothorax": 0}),
    ("No pulmonary nodules or mass lesions identified.", {"Lung Lesion": 0}),
    ("No abnormal mediastinal widening.", {"Enlarged Cardiomediastinum": 0}),
    ("There is no focal consolidation to suggest pneumonia.", {"Consolidation": 0, "Pneumonia": 0}),
    (  # "large" inside a negated list is not a new statement
        "No focal consolidation, large pleural effusion, or pneumothorax.",
        {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0},
    ),
    (
        "Compared to prior chest radiograph from XXXX, there has been removal of right-sided tunneled "
        "dialysis catheter.",
        {"Support Devices": 0},
    ),
    # explicitly normal wording
    ("The heart is normal in size.", {"Cardiomegaly": 0}),
    ("The heart is not grossly enlarged.", {"Cardiomegaly": 0}),
    ("The cardiomediastinal contours are within normal limits.", {"Enlarged Cardiomediastinum": 0}),
    # positive
    ("Stable cardiomegaly.", {"Cardiomegaly": 1}),
    ("Cardiac silhouette remains moderately enlarged.", {"Cardiomegaly": 1}),
    ("Stable widening of the upper mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("A 3.0 cm nodule is present within the right hilum.", {"Lung Lesion": 1}),
    ("Right middle lobe and lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Heart failure with pulmonary edema.", {"Edema": 1}),
    (
        "Bibasilar atelectasis and small left-sided pleural effusion.",
        {"Atelectasis": 1, "Pleural Effusion": 1},
    ),
    ("There is a right-sided pneumothorax with 10 mm in maximal thickness.", {"Pneumothorax": 1}),
    (
        "Old rib fractures and pleural thickening are present on the right.",
        {"Fracture": 1, "Pleural Other": 1},
    ),
    ("Catheter tip in upper SVC.", {"Support Devices": 1}),
    ("Stable appearance of pacemaker.", {"Support Devices": 1}),
    ("Midline sternotomy XXXX.", {"Support Devices": 1}),  # "wires" is de-identified to XXXX
    ("Cardiomegaly, however no acute cardiopulmonary findings.", {"Cardiomegaly": 1}),
    (  # the negation after "otherwise" does not reach back
        "Minimal subsegmental atelectasis at the left base otherwise negative for focal confluent airspace "
        "disease.",
        {"Atelectasis": 1, "Lung Opacity": 0},
    ),
    # uncertainty
    (
        "There is right middle lobe airspace disease, may reflect atelectasis or pneumonia.",
        {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1},
    ),
    ("Right basilar XXXX opacity may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    (
        "Possible small right pleural effusion, without focal consolidation or pneumothorax.",
        {"Pleural Effusion": -1, "Consolidation": 0, "Pneumothorax": 0},
    ),
    ("Left midlung subsegmental atelectasis versus scar.", {"Atelectasis": -1, "Lung Opacity": -1}),
    ("A subtle infiltrate cannot be excluded.", {"Lung Opacity": -1}),
    ("Metastatic disease cannot be excluded.", {"Lung Lesion": -1}),
    ("Possible lower posterior lateral left rib fractures as described above.", {"Fracture": -1}),
    (
        "Lungs are mildly hypoinflated with blunted costophrenic XXXX suggesting small bilateral pleural "
        "effusions.",
        {"Pleural Effusion": -1},
    ),
    (  # a positive mention in one clause beats an uncertain one; pericardial effusion is not pleural
        "Mildly enlarged cardiac silhouette; cardiomegaly versus pericardial effusion.",
        {"Cardiomegaly": 1},
    ),
    # not CheXpert observations at all
    ("Mild degenerative changes of the thoracic spine.", {}),
    ("Calcified granuloma is noted in the left upper lobe.", {}),
    ("Findings consistent with widespread changes from cystic fibrosis.", {}),
    ("No acute cardiopulmonary abnormality.", {}),
]


@pytest.mark.parametrize(("sentence", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_labels_of_real_iu_sentences(sentence: str, expected: dict[str, Label]) -> None:
    labels = label(sentence)
    assert set(labels) == set(OBSERVATIONS)
    got = {k: v for k, v in labels.items() if k != NO_FINDING and v is not None}
    assert got == expected


def test_cases_are_real_iu_sentences() -> None:
    path = IU_DIR / "indiana_reports.csv"
    text = path.read_text(encoding="utf-8")
    assert [s for s, _ in CASES if s not in text] == []


def test_no_finding_follows_the_pathologies_not_the_devices() -> None:
    assert label("No pneumothorax or pleural effusion.")[NO_FINDING] == 1
    assert label("Mild degenerative changes of the thoracic spine.")[NO_FINDING] == 1  # outside the 14
    assert label("Stable appearance of pacemaker.")[NO_FINDING] == 1  # devices are not pathology
    assert label("Stable cardiomegaly.")[NO_FINDING] == 0
    assert label("A subtle infiltrate cannot be excluded.")[NO_FINDING] == 0  # uncertain is abnormal


def test_whole_report_aggregates_positive_over_negative() -> None:
    report = (
        "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary "
        "edema. There is no focal consolidation. There are no XXXX of a pleural effusion. There is no "
        "evidence of pneumothorax. Stable cardiomegaly."
    )
    labels = label(report)
    assert labels["Cardiomegaly"] == 1  # "within normal limits" earlier, "cardiomegaly" later: positive wins
    assert labels["Edema"] == labels["Consolidation"] == labels["Pleural Effusion"] == 0
    assert labels[NO_FINDING] == 0


def test_clauses_split_sentences_and_negation_scope() -> None:
    assert clauses("Heart normal.Lungs clear; no effusion, the aorta is tortuous.") == [
        "heart normal",
        "lungs clear",
        "no effusion",
        "the aorta is tortuous",
    ]
    assert clauses("A 3.5 cm nodule.") == ["a 3.5 cm nodule"]


def test_uncertain_counts_as_positive() -> None:
    assert is_positive(1) and is_positive(-1)
    assert not is_positive(0) and not is_positive(None)


def test_compare_micro_and_macro() -> None:
    refs = {"1": "Stable cardiomegaly.", "2": "No pneumothorax or pleural effusion.", "3": "Small effusions."}
    hyps = {"1": "Stable cardiomegaly.", "2": "Possible small pleural effusion.", "3": "Clear lungs."}
    result = compare(refs, hyps)
    assert result.n_studies == 3
    cardio, effusion = result.per_observation["Cardiomegaly"], result.per_observation["Pleural Effusion"]
    assert (cardio.precision, cardio.recall, cardio.f1, cardio.support) == (1.0, 1.0, 1.0, 1)
    assert (effusion.precision, effusion.recall, effusion.support) == (0.0, 0.0, 1)  # wrong study
    nofind = result.per_observation[NO_FINDING]  # ref: study 2; hyp: study 3
    assert (nofind.precision, nofind.recall) == (0.0, 0.0)
    # micro: tp 1 (cardiomegaly), fp 2 (effusion in 2, no finding in 3), fn 2 (effusion in 3, no finding in 2)
    assert result.micro.precision == pytest.approx(1 / 3)
    assert result.micro.recall == pytest.approx(1 / 3)
    # Macro: the mean over the 3 observations some reference is positive for (cardiomegaly 1,
    # effusion 0, no finding 0); the 11 that no study has are not averaged in as zeros.
    assert result.macro.f1 == pytest.approx(1 / 3)
    assert result.macro.recall == pytest.approx(1 / 3) and result.macro.precision == pytest.approx(1 / 3)
    with pytest.raises(ScoringError):
        compare(refs, {"9": "Clear."})


def test_normal_agreement_against_mesh() -> None:
    assert is_normal("normal") and is_normal(" Normal ")
    assert not is_normal("Cardiomegaly/mild") and not is_normal("normal;Granuloma")
    mesh = {
        "1": "normal",
        "2": "Cardiomegaly/borderline",
        "3": "normal",
        "4": "Thoracic Vertebrae/degenerative",
    }
    reports = {
        "1": "No pneumothorax or pleural effusion.",
        "2": "Stable cardiomegaly.",
        "3": "Stable cardiomegaly.",
        "4": "Mild degenerative changes of the thoracic spine.",
    }
    result = normal_agreement(mesh, reports)
    assert result.counts == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert result.accuracy == 0.5 and result.precision == 0.5 and result.recall == 0.5
    assert result.kappa == pytest.approx(0.0)
