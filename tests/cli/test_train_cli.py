"""`xrq train` as a user runs it, and the demo model it made (models/demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from model.datasets.iu import read_iu
from model.imaging.images import decode
from model.inference.generate import GenerationSettings, generate
from model.metrics.text import normalise
from model.network.store import load
from tests.conftest import EXAMPLES, IU_CSV, REPO

DATA = ["--reports", str(IU_CSV / "indiana_reports.csv"), "--projections", str(IU_CSV / "indiana_projections.csv"),
        "--images", str(EXAMPLES)]
FAST = ["--tokenizer", "train", "--split", "all", "--max-steps", "2", "--batch-size", "9", "--eval-every", "2",
        "--max-tokens", "12"]


@pytest.mark.slow  # trains
def test_train_stop_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(cli, ["train", *DATA, "--out", str(out), *FAST, "--stop-after", "1"])
    assert first.exit_code == 0, first.output
    shown = [line for line in first.output.splitlines() if not line.startswith("Warning: --warmup 100")]
    assert shown[0].startswith("Data: 9 studies to train on, 9 to validate on; skipped 514 with an empty text")
    assert "Trained to step 1 of 2" in first.output and f"continue: xrq train --out {out} --resume" in first.output

    clash = runner.invoke(cli, ["train", "--out", str(out), "--resume", "--lr", "0.5"])
    assert clash.exit_code == 2
    assert "Error: --resume continues the run with its stored settings; drop --lr 0.5 (the run has 0.0001)" \
        in clash.output

    second = runner.invoke(cli, ["train", "--out", str(out), "--resume", "--json"])
    assert second.exit_code == 0, second.output
    result = json.loads(second.stdout)  # stderr: the --warmup warning
    assert (result["step"], result["finished"], result["data"]["train"]) == (2, True, 9)
    assert {"val_loss", "val_bleu_4", "val_cider"} <= result["scores"].keys()
    meta = json.loads((out / "best" / "xrq.json").read_text())
    assert meta["training"]["command"] == (
        f"xrq train {' '.join(DATA)} --out {out} --tokenizer train --split all --max-tokens 12 --max-steps 2 "
        "--batch-size 9 --eval-every 2")


def test_train_errors_are_short(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["train", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "Missing --reports, --projections, --images (needed unless --resume)" \
        in missing.output
    nothing = runner.invoke(cli, ["train", "--out", str(tmp_path / "x"), "--resume"])
    assert nothing.exit_code == 1
    x = tmp_path / "x"
    assert nothing.output == f"Error: No checkpoint to resume in {x} (expected {x / 'last'}); start a run with " \
        "`xrq train`.\n"
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "Examples:" in help_text and "--resume" in help_text and "--split [benchmark|random|all]" in help_text


def test_the_shipped_demo_model_reproduces_its_training_studies() -> None:
    demo = REPO / "models" / "demo"
    bundle = load(demo, device="cpu")
    meta = bundle.meta.to_dict()
    assert meta["training"]["command"].startswith("xrq train ")
    assert meta["training"]["data"]["train"] == 9 and meta["training"]["config"]["split"] == "all"
    assert "not clinically meaningful" in (demo / "README.md").read_text()
    assert sum(f.stat().st_size for f in demo.iterdir()) < 5_000_000
    truth = read_iu(IU_CSV / "indiana_reports.csv")
    studies = {"7": ["CXR7_IM-2263-1001.png", "CXR7_IM-2263-2001.png"], "1001": ["1001_IM-0004-1001.dcm.png"]}
    reports = generate(bundle, [[decode(EXAMPLES / n) for n in names] for names in studies.values()],
                       GenerationSettings(max_new_tokens=128))
    for uid, report in zip(studies, reports, strict=True):
        assert normalise(report) == normalise(truth[uid].findings)


def test_train_warns_of_a_warmup_longer_than_the_run_and_a_best_metric_stuck_at_zero(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", *DATA, "--out", str(out), *FAST, "--warmup", "100", "--lr", "1e-9",
                                      "--best-metric", "bleu_4", "--json"])
    assert result.exit_code == 0, result.output
    assert ("Warning: --warmup 100 is longer than the run (2 steps): the learning rate never reaches --lr (it "
            "peaks at 2% of it); lower --warmup or train longer") in result.output
    assert (f"Warning: the best-checkpoint metric val_bleu_4 stayed 0 at all 1 validations, so {out / 'best'} is "
            "only the first checkpoint: train longer, or pick it by --best-metric val_loss") in result.output
    quiet = CliRunner().invoke(cli, ["train", *DATA, "--out", str(tmp_path / "q"), *FAST, "--warmup", "1",
                                     "--best-metric", "val_loss", "--json"])
    assert quiet.exit_code == 0 and "Warning" not in quiet.output
