"""Training learns to read the image: the synthetic conditioning benchmark, small, must beat an image-blind run.

Runs bench/conditioning.py as a user would (`xrq truth import`, `xrq train` twice, `xrq submit`,
`xrq evaluate`) on a seeded synthetic set, and fails when the model's clinical findings F1 does not beat
the same training with the images blanked by a clear margin. A few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, cast

import pytest

from tests.conftest import REPO

# What the small run does today (seed 0, 600 steps: model F1-macro 0.22 against 0.07 image-blind, 5
# distinct reports against 1), with room to spare; the issue's targets are the xfail test below.
MARGIN = 0.1  # clinical F1-macro, model minus image-blind


@pytest.fixture(scope="module")
def small_run() -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "conditioning.py"), "--size", "small", "--seed", "0",
                           "--json"], capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return cast(dict[str, Any], json.loads(done.stdout))


def figures(result: dict[str, Any]) -> str:
    return json.dumps({k: {m: s[m] for m in ("f1_macro", "f1", "laterality", "distinct")}
                       for k, s in result["systems"].items()}, indent=1)


@pytest.mark.slow
def test_the_model_reads_the_image_where_an_image_blind_run_cannot(small_run: dict[str, Any]) -> None:
    model, blind, constant = (small_run["systems"][k] for k in ("model", "image_blind", "constant"))
    assert small_run["studies"] == {"train": small_run["size"]["n_train"], "val": small_run["size"]["n_val"],
                                    "test": small_run["size"]["n_test"]}
    assert model["f1_macro"] - blind["f1_macro"] >= MARGIN, figures(small_run)
    assert max(blind["f1_macro"], constant["f1_macro"]) <= 0.4, figures(small_run)
    assert model["distinct"]["distinct_reports"] >= 3 * blind["distinct"]["distinct_reports"], figures(small_run)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="not yet: from scratch on a few hundred studies the tiny model memorises its training "
                          "studies before it learns where findings are; remove when the targets are met")
def test_the_issue_targets(small_run: dict[str, Any]) -> None:
    model = small_run["systems"]["model"]
    assert model["f1_macro"] >= 0.8, figures(small_run)
    assert model["laterality"]["accuracy"] >= 0.9, figures(small_run)
    assert model["distinct"]["ratio"] >= 0.8, figures(small_run)
