"""The synthetic conditioning data: reports that say exactly what is drawn, where it is drawn, seeded files
in the IU layout that training reads, and the laterality metric."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import numpy as np
from PIL import Image

from model.datasets import synthetic
from model.datasets.iu import benchmark_split, read_iu
from model.datasets.synthetic import (
    EFFUSION,
    HEART_ENLARGED,
    HEART_NORMAL,
    LUNGS_CLEAR,
    NO_EFFUSION,
    NO_PNEUMOTHORAX,
    OPACITY,
    SIDES,
    ZONES,
    Findings,
    Phrasing,
    distinct_ratio,
    draw,
    generate,
    image_blind_f1_max,
    lateral_findings,
    laterality,
    report,
)
from model.metrics.labeller import OBSERVATIONS, is_positive, label
from model.training.data import load_data
from tests.conftest import REPO

ALL_FINDINGS = [Findings(o, e, c) for o in (None, *ZONES) for e in (None, *SIDES) for c in (False, True)]
ALL_PHRASINGS = [Phrasing(*p) for p in itertools.product(HEART_NORMAL, HEART_ENLARGED, LUNGS_CLEAR, OPACITY,
                                                          EFFUSION, NO_EFFUSION, NO_PNEUMOTHORAX)]


def positives(text: str) -> set[str]:
    return {o for o, v in label(text).items() if is_positive(v)}


def test_every_report_is_labelled_exactly_with_its_findings() -> None:
    # Every sentence of every pool appears in some phrasing of this sample (a stride prime to the pools).
    for phrasing, findings in itertools.product(ALL_PHRASINGS[::97], ALL_FINDINGS):
        text = report(findings, phrasing)
        expected = {name for name, present in (("Lung Opacity", findings.opacity), ("Pleural Effusion",
                    findings.effusion), ("Cardiomegaly", findings.cardiomegaly), ("No Finding", findings.normal))
                    if present}
        assert positives(text) == expected, text
        sides = lateral_findings(text)
        if findings.opacity:
            assert sides["Lung Opacity"] == frozenset(findings.opacity.split()), text
        if findings.effusion:
            assert sides["Pleural Effusion"] == {findings.effusion}, text
        assert set(sides) == {f for f, x in (("Lung Opacity", findings.opacity),
                                             ("Pleural Effusion", findings.effusion)) if x}


def test_a_seed_picks_one_phrasing_and_thirty_distinct_reports() -> None:
    assert Phrasing.from_seed(3) == Phrasing.from_seed(3)
    assert len({Phrasing.from_seed(s) for s in range(20)}) > 10
    assert len({report(f, Phrasing.from_seed(0)) for f in ALL_FINDINGS}) == len(ALL_FINDINGS) == 30
    assert set(OBSERVATIONS) >= set(synthetic.OBSERVED)


def test_findings_are_drawn_where_the_report_says() -> None:
    flat = np.full((288, 288), 60.0, dtype=np.float32)  # a plain background shows what is painted

    def painted(findings: Findings, projection: str = "Frontal") -> np.ndarray:
        picture = draw(flat, findings, projection, random.Random(0), 256)
        return np.asarray(picture, np.float32) - np.asarray(draw(flat, Findings(), projection, random.Random(0), 256))

    def quadrant(pixels: np.ndarray, top: bool, image_left: bool) -> float:
        rows = slice(64, 128) if top else slice(128, 176)
        cols = slice(32, 112) if image_left else slice(144, 224)
        return float(pixels[rows, cols].mean())

    # Radiological convention: the patient's right is on the viewer's left of a frontal view.
    right_upper = painted(Findings(opacity="right upper"))
    assert quadrant(right_upper, True, True) > 10 * max(quadrant(right_upper, True, False), 0.1)
    left_lower = painted(Findings(opacity="left lower"))
    assert quadrant(left_lower, False, False) > 10 * max(quadrant(left_lower, False, True), 0.1)
    left_effusion = painted(Findings(effusion="left"))
    assert left_effusion[200:230, 150:220].mean() > 50 > left_effusion[200:230, 30:100].mean()
    assert left_effusion[:150].max() < 1  # nothing in the upper lungs
    heart = painted(Findings(cardiomegaly=True))
    assert heart[160:180, 110:160].mean() > 50 and heart[:100].max() < 1
    lateral = painted(Findings(opacity="right upper"), "Lateral")
    assert lateral[70:115, 110:160].mean() > 10


def test_generate_writes_a_seeded_iu_layout_that_training_reads(tmp_path: Path) -> None:
    data = generate(tmp_path / "a", seed=5, n_train=8, n_val=2, n_test=3, repository=REPO)
    generate(tmp_path / "b", seed=5, n_train=8, n_val=2, n_test=3, repository=REPO)
    other = generate(tmp_path / "c", seed=6, n_train=8, n_val=2, n_test=3, repository=REPO)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")

    studies = read_iu(data.reports_csv, data.projections_csv)
    assert len(studies) == 13 and {s.uid: s.findings for s in studies.values()} == data.truth()
    assert all(s.images[0][1] == "Frontal" for s in studies.values())
    assert [s.mesh for s in studies.values()] == [synthetic._mesh(s.findings) for s in data.studies]
    split = benchmark_split(data.split_csv)
    assert sorted(split.values()).count("test") == 3
    loaded = load_data(data.reports_csv, data.projections_csv, data.images(), text="findings", views="all",
                       split="benchmark", seed=0, split_file=data.split_csv)
    assert (loaded.summary.train, loaded.summary.val, loaded.summary.images_missing) == (8, 2, 0)
    assert {e.uid for e in loaded.train} == {s.uid for s in data.studies if s.split == "train"}
    assert all(e.images[0].name.endswith("-1001.png") for e in loaded.train)  # frontal first, as submit orders
    first = data.studies[0]
    picture = Image.open(data.images() / first.images[0][0])
    assert picture.mode == "L" and picture.size == (256, 256)
    blank = np.asarray(Image.open(data.images(blank=True) / first.images[0][0]))
    assert blank.min() == blank.max() == 128
    assert sorted(p.name for p in data.split_images("test").iterdir()) == sorted(
        Path(name).name for s in data.studies if s.split == "test" for name, _ in s.images)
    assert other.phrasing == Phrasing.from_seed(6)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_laterality_counts_only_findings_both_report_and_checks_their_side() -> None:
    phrasing = Phrasing.from_seed(0)
    truth = {"1": report(Findings("right upper", "left"), phrasing), "2": report(Findings("left lower"), phrasing),
             "3": report(Findings(effusion="right"), phrasing), "4": report(Findings(), phrasing)}
    assert laterality(truth, truth)["accuracy"] == 1.0 and laterality(truth, truth)["n"] == 4
    swapped = {"1": report(Findings("left upper", "right"), phrasing),  # both sides wrong
               "2": report(Findings("left upper"), phrasing),  # side right, level wrong
               "3": report(Findings(), phrasing),  # missed: a matter for F1, not laterality
               "4": report(Findings(opacity="right lower"), phrasing)}  # false positive: idem
    result = laterality(truth, swapped)
    assert (result["n"], result["accuracy"], result["zone_accuracy"]) == (3, 1 / 3, 0.0)
    assert result["per_finding"] == {"Lung Opacity": {"accuracy": 0.5, "n": 2},
                                     "Pleural Effusion": {"accuracy": 0.0, "n": 1}}
    assert laterality(truth, {"4": truth["4"]})["accuracy"] is None
    # Real IU wording: "bilateral" is both sides, a side-less effusion is said but not placed.
    assert lateral_findings("There are bilateral pleural effusions.") == {"Pleural Effusion": {"left", "right"}}
    assert lateral_findings("Small pleural effusion. Heart size is normal.") == {"Pleural Effusion": frozenset()}
    assert lateral_findings("No pleural effusion. The right lung is clear.") == {}


def test_distinct_ratio_counts_reports_against_truths() -> None:
    truth = {"1": "a", "2": "b", "3": "b", "4": "c"}
    assert distinct_ratio(truth, {"1": "x", "2": "x", "3": "x", "4": "x"}) == {
        "distinct_reports": 1, "distinct_truths": 3, "ratio": 1 / 3, "truths_written": 0, "written_ratio": 0.0}
    assert distinct_ratio(truth, truth)["ratio"] == distinct_ratio(truth, truth)["written_ratio"] == 1.0
    # Variety that ignores the image: as many reports as truths, but none of them the study's own.
    shuffled = distinct_ratio(truth, {"1": "b", "2": "c", "3": "a", "4": "b"})
    assert (shuffled["ratio"], shuffled["truths_written"]) == (1.0, 0)


def test_image_blind_f1_max_is_what_reports_that_ignore_the_image_can_expect() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    truth = {"No Finding": rng.random(n) < 0.2, **{o: rng.random(n) < p for o, p in
                                                  (("Cardiomegaly", 0.35), ("Lung Opacity", 0.4),
                                                   ("Pleural Effusion", 0.4))}}
    support = {o: int(t.sum()) for o, t in truth.items()}

    def f1(said: np.ndarray, true: np.ndarray) -> float:
        tp = int((said & true).sum())
        return 2 * tp / (int(said.sum()) + int(true.sum()))

    def macro(t: float) -> float:  # "no finding" for a random share t of studies, every finding for the rest
        normal = rng.random(n) < t
        return float(np.mean([f1(normal if o == "No Finding" else ~normal, true) for o, true in truth.items()]))

    best = image_blind_f1_max(support, n)
    everyone = macro(0.0)  # every finding for everyone: already above the 0.4
    assert 0.4 < everyone < best
    assert max(macro(t / 20) for t in range(21)) <= best + 0.005
    assert any(abs(macro(t / 100) - best) < 0.005 for t in range(5, 30))
    assert image_blind_f1_max({"Cardiomegaly": 35}, 100) == 2 * 0.35 / 1.35  # one label: say it for all
