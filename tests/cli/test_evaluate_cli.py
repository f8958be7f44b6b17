"""`xrq truth import` and `xrq evaluate` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from tests.conftest import IU_CSV


def test_import_then_evaluate_the_baseline(tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    runner = CliRunner()
    args = ["truth", "import", str(IU_CSV / "indiana_reports.csv"), str(IU_CSV / "indiana_projections.csv"),
            "--split-file", str(IU_CSV / "r2gen_split.csv")]
    first = runner.invoke(cli, args, env=env)
    assert first.exit_code == 0
    assert first.output == "Ground truth: 3851 studies added, 0 changed, 0 unchanged; 7466 image names added.\n"
    again = runner.invoke(cli, [*args, "--json"], env=env)
    assert json.loads(again.output) == {"added": 0, "changed": 0, "unchanged": 3851, "images_added": 0}

    result = runner.invoke(cli, ["evaluate", "--baseline", "most-frequent", "--split", "test", "--no-meteor",
                                 "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["n_studies"], data["distinct_reports"], data["meteor"]) == (590, 1, None)
    assert round(data["bleu_4"], 3) == 0.081 and round(data["cider"], 3) == 0.344

    table = runner.invoke(cli, ["evaluate", "--baseline", "most-frequent", "--split", "test", "--no-meteor"],
                          env=env)
    lines = table.output.splitlines()
    assert lines[0] == "Evaluation 2: baseline most-frequent against iu, split test (findings), 590 studies"
    assert lines[1].split() == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert lines[2].split()[3] == "0.081" and lines[2].split()[4] == "n/a"


def test_evaluate_needs_one_source_and_ground_truth(tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = CliRunner().invoke(cli, ["evaluate"], env=env)
    assert result.exit_code == 1
    assert result.output == ("Error: say what to score: exactly one of --job, --model, --predictions, "
                             "--baseline\n")
    result = CliRunner().invoke(cli, ["evaluate", "--baseline", "most-frequent"], env=env)
    assert result.output == ("Error: no ground truth imported yet: run `xrq truth import REPORTS_CSV "
                             "PROJECTIONS_CSV`\n")
