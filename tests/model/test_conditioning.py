"""Training learns to read the image: the synthetic conditioning benchmark, run as a user would.

Each test runs bench/conditioning.py (`xrq truth import`, `xrq train` twice, `xrq submit`, `xrq evaluate`)
on a seeded synthetic set. The small run (a few minutes) fails when the model's clinical findings F1 does
not beat the same training on blanked images by a clear margin; the full run (the benchmark itself, small-v2,
about half an hour on two CPU cores) holds the model to the issue's targets. Training is budgeted in
steps and seeded, so each run gives the same numbers on one host and install (another CPU's kernels round
differently, and a training amplifies that: see the full run's test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import REPO

# The small run (seed 0, 1000 steps on 1,200 studies) gives clinical F1-macro 0.38 against 0.08 for the
# image-blind run, 3 distinct reports (each a truth, word for word) against 1, and effusion sides 0.81 over
# 36; the margins leave room for a change that costs a little, not for one that stops the model reading
# the image. (0.38 is not yet above what reports that ignore the image could reach, 0.48: the full run is.)
MARGIN = 0.2  # clinical F1-macro, model minus image-blind


def conditioning(size: str, seed: int = 0, *options: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.conditioning", "--size", size, "--seed", str(seed), *options,
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=3000, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return cast(dict[str, Any], json.loads(done.stdout))


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conditioning") / "kept"


@pytest.fixture(scope="module")
def small_run(kept: Path) -> dict[str, Any]:
    return conditioning("small", 0, "--keep", str(kept))


def figures(result: dict[str, Any]) -> str:
    return json.dumps({"image_blind_f1_max": result["image_blind_f1_max"], "checks": result["checks"],
                       **{k: {m: s[m] for m in ("f1_macro", "f1", "laterality", "distinct", "n_studies")}
                          for k, s in result["systems"].items()},
                       "last_train_loss": {k: s.get("last_train_loss") for k, s in result["systems"].items()},
                       "environment": result.get("environment")}, indent=1)


@pytest.mark.slow
def test_the_model_reads_the_image_where_an_image_blind_run_cannot(small_run: dict[str, Any]) -> None:
    model, blind, constant = (small_run["systems"][k] for k in ("model", "image_blind", "constant"))
    assert small_run["studies"] == {"train": small_run["size"]["n_train"], "val": small_run["size"]["n_val"],
                                    "test": small_run["size"]["n_test"]}
    assert model["f1_macro"] - blind["f1_macro"] >= MARGIN, figures(small_run)
    assert max(blind["f1_macro"], constant["f1_macro"]) <= 0.4, figures(small_run)
    assert model["distinct"]["distinct_reports"] >= 2 * blind["distinct"]["distinct_reports"], figures(small_run)
    assert model["distinct"]["truths_written"] >= 2 * blind["distinct"]["truths_written"], figures(small_run)
    # The effusions it reports, on their side: 0.81 of 36 pairs, where a guess gets about half.
    assert model["laterality"]["n"] >= 20 and model["laterality"]["accuracy"] >= 0.7, figures(small_run)
    assert small_run["checks"]["every_test_study_reported"], figures(small_run)


@pytest.mark.slow
def test_the_benchmark_reports_confidence_and_attention(small_run: dict[str, Any]) -> None:
    """Issue 20's figures are there and computed on every test study (seed 0, small: AUROC 0.57 of 27 right
    and 53 wrong; effusion sentences 0.48 on the painted half over 34 studies). No target: the small model's
    confidence and mean attention do not yet separate (README)."""
    evidence = small_run["evidence"]
    assert evidence["right"] + evidence["wrong"] == small_run["size"]["n_test"]
    assert 0.0 <= evidence["auroc_confidence_findings_right"] <= 1.0
    assert 0.0 < evidence["mean_confidence_right"] <= 1.0 and 0.0 < evidence["mean_confidence_wrong"] <= 1.0
    assert evidence["effusion_studies"] >= 20 and 0.0 < evidence["effusion_map_on_painted_half"] < 1.0
    relevance = evidence["relevance"]  # the same studies, the maps carried back through the encoder
    assert relevance["effusion_studies"] == evidence["effusion_studies"]
    assert 0.0 < relevance["effusion_map_on_painted_half"] < 1.0
    assert relevance["effusion_map_on_painted_half"] != evidence["effusion_map_on_painted_half"]
    assert evidence["attention_study"] is not None


@pytest.mark.slow
def test_a_kept_model_scores_as_its_run_did(small_run: dict[str, Any], kept: Path) -> None:
    """`--model DIR` scores a trained model again without training it (the attention figures of a kept run,
    measured after the run): the same data from the seed, the same reports, the same figures."""
    again = conditioning("small", 0, "--no-blind", "--model", str(kept / "0" / "model" / "best"))
    assert again["timings"]["train_s"] < 5 and "image_blind" not in again["systems"]
    for figure in ("f1_macro", "laterality", "distinct", "bleu_4"):
        assert again["systems"]["model"][figure] == small_run["systems"]["model"][figure]
    assert again["evidence"]["occlusion"] == small_run["evidence"]["occlusion"]


@pytest.mark.slow
def test_the_benchmark_meets_the_issue_targets() -> None:
    """The full benchmark with small-v2 (seed 0, 4,500 steps on 3,000 studies, no augmentation; about 27
    minutes on two cores, the image-blind training beside it): F1-macro 0.97 where reports that ignore the
    image can expect 0.43 at best, laterality 1.00 (opacity zone 0.98), 24 of 25 distinct truths written
    word for word. With --augment (this test's configuration until the ten-seed run without it, README)
    the same seed gave 0.91, 1.00 and 0.89.

    One host and install give the same figures on every run, but not every host the same: the small preset
    on seed 0 scored F1 0.92 and laterality 0.96 here and 0.75 and under 0.9 on CI's host (twice, the same
    figures), its laterality margin being thin on every seed (0.92 to 0.97). This configuration trained
    with the instruction set capped at AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    MKL_ENABLE_INSTRUCTIONS=AVX2) gave F1 0.98, laterality 0.99 and zone 0.92. On failure the message
    carries each training's last loss and the environment (libraries, CPU instruction set) to compare."""
    full = conditioning("full", 0, "--preset", "small-v2")
    assert all(full["targets"].values()), f"{full['targets']}\n{figures(full)}"
    assert all(full["checks"].values()), figures(full)


def test_seed_ranges_and_the_summary_over_seeds() -> None:
    """`--seeds 100-109` is ten seeds; the summary gives each figure's mean, spread, min and max."""
    from bench import conditioning as bench

    assert bench.seeds("100-109") == list(range(100, 110)) and bench.seeds("3,5-6") == [3, 5, 6]

    def result(seed: int, f1: float, side: float, zone: float) -> dict[str, Any]:
        return {"seed": seed, "timings": {"cpu_s": 600.0},
                "systems": {"model": {"f1_macro": f1, "laterality": {"accuracy": side, "zone_accuracy": zone}}}}

    summary = bench.summary([result(100, 0.9, 1.0, 0.8), result(101, 1.0, 0.9, 1.0)])
    assert summary["seeds"] == [100, 101] and summary["cpu_min"]["mean"] == 10.0
    assert summary["f1_macro"]["mean"] == pytest.approx(0.95) and summary["f1_macro"]["std"] == pytest.approx(0.05)
    assert (summary["opacity_zone"]["min"], summary["laterality"]["max"]) == (0.8, 1.0)


def test_the_painted_region_is_measured_where_it_was_painted() -> None:
    """The attention figures' regions follow synthetic.draw: image left is the patient's right, an upper
    zone above ZONE_SPLIT. A map all on the patient's right upper zone is all there, none elsewhere; an
    even map puts ZONE_AREA in each zone."""
    import numpy as np

    from bench.conditioning import ZONE_AREA, _in_zone, _on_side
    from model.datasets.synthetic import _grid

    rows = cols = 24
    y, x = _grid(rows)
    spot = ((np.abs(y - 0.36) < 0.05) & (np.abs(x - 0.27) < 0.05)).astype(float)  # draw()'s right upper centre
    spot /= spot.sum()
    assert _on_side(spot, "right") == 1.0 and _on_side(spot, "left") == 0.0
    assert _in_zone(spot, "right", "upper") == 1.0
    assert _in_zone(spot, "right", "lower") == _in_zone(spot, "left", "upper") == 0.0
    even = np.full((rows, cols), 1.0 / (rows * cols))
    assert _in_zone(even, "left", "upper") == pytest.approx(ZONE_AREA, abs=0.5 / rows)
    assert _in_zone(even, "left", "lower") == pytest.approx(0.5 - ZONE_AREA, abs=0.5 / rows)
