"""`xrq truth import` and `xrq evaluate` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


@pytest.fixture
def reported(tiny_model: Path, iu_folder: Path, tmp_path: Path) -> dict[str, str]:
    """A job of four IU studies (1000, 54, 7, 25), their ground truth imported."""
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "XRQ_MODEL": str(tiny_model)}
    runner = CliRunner()
    for args in (["submit", str(iu_folder)], ["truth", "import", str(IU_CSV / "indiana_reports.csv")]):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    return env


def scores(env: dict[str, str], *args: str) -> dict:
    result = CliRunner().invoke(cli, ["evaluate", *args, "--text", "both", "--no-meteor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _rounded(value: object) -> object:
    """Floats to 9 significant digits, inside lists and dicts (a CSV writes fewer than a float has)."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


@pytest.mark.parametrize(("command", "name"), [(["reports"], "r.jsonl"), (["reports"], "r.csv"),
                                               (["export", "1"], "e.parquet"), (["export", "1"], "e.jsonl")])
def test_xrq_reads_its_own_files_by_uid(reported: dict[str, str], tmp_path: Path, command: list[str],
                                        name: str) -> None:
    """`study_id` in xrq's files is the database id; scored by it, reports met other studies' truth."""
    out = tmp_path / name
    assert CliRunner().invoke(cli, [*command, "-o", str(out)], env=reported).exit_code == 0
    direct = scores(reported, "--job", "1")
    read = scores(reported, "--predictions", str(out))
    assert read["matched"] == {"given": 4, "with_truth": 4, "scored": 4, "id_column": "uid"}
    assert direct["matched"] == {"given": 4, "with_truth": 4, "scored": 4, "id_column": None}
    assert {k: read[k] for k in ("bleu_4", "rouge_l", "cider", "n_studies")} == \
        {k: direct[k] for k in ("bleu_4", "rouge_l", "cider", "n_studies")}
    # The files carry each report's confidence, so the calibration is the stored reports' own.
    assert direct["calibration"]["n_studies"] == 4
    assert _rounded(read["calibration"]) == _rounded(direct["calibration"])
    table = CliRunner().invoke(cli, ["evaluate", "--predictions", str(out), "--text", "both", "--no-meteor"],
                               env=reported).output.splitlines()
    assert table[1] == "  4 predictions: 4 matched ground truth ids (by uid), 4 scored"


def test_predictions_that_mostly_name_no_study_are_refused(reported: dict[str, str], tmp_path: Path) -> None:
    preds = tmp_path / "p.csv"
    preds.write_text("accession,report\nA1,No acute disease.\nA2,Clear lungs.\n1000,Normal heart.\n")
    result = CliRunner().invoke(cli, ["evaluate", "--predictions", str(preds), "--id-column", "accession",
                                      "--no-meteor"], env=reported)
    assert result.exit_code == 1
    assert result.output == (f"Error: only 1 of 3 predictions in {preds} name a study of ground truth 'iu' by "
                             "their 'accession' (theirs: '1000', 'A1', 'A2'; the ground truth's: '1', '10', "
                             "'100'); choose the column that holds the study uid with --id-column, or import "
                             "the matching ground truth\n")
    preds.write_text("accession,report\nA1,No acute disease.\n1000,Normal heart.\n")  # half: scored
    data = scores(reported, "--predictions", str(preds), "--id-column", "accession")
    assert data["matched"] == {"given": 2, "with_truth": 1, "scored": 1, "id_column": "accession"}


def test_evaluate_relates_confidence_to_quality(reported: dict[str, str], tmp_path: Path) -> None:
    """The job's stored confidences ranked against its per-study BLEU-4 and clinical F1, in --json,
    the table and a third row of evaluation.png."""
    from model.metrics.calibration import spearman, study_f1

    listed = {r["uid"]: r for r in map(json.loads, CliRunner().invoke(
        cli, ["reports", "--format", "jsonl"], env=reported).output.splitlines())}
    out = tmp_path / "eval"
    data = scores(reported, "--job", "1", "-o", str(out))
    cal = data["calibration"]
    assert cal["n_studies"] == 4 and sum(b["n"] for b in cal["bins"]) == 4
    per_study = json.loads((out / "evaluation.json").read_text())["per_study"]
    uids = sorted(per_study)
    confidence = [listed[u]["confidence"] for u in uids]
    assert cal["spearman_bleu_4"] == spearman(confidence, [per_study[u]["bleu_4"] for u in uids])
    assert cal["spearman_clinical_f1"] == spearman(
        confidence, [study_f1(per_study[u]["reference"], per_study[u]["hypothesis"]) for u in uids])
    table = CliRunner().invoke(cli, ["evaluate", "--job", "1", "--text", "both", "--no-meteor"], env=reported).output
    assert "confidence vs quality (4 studies): Spearman rho with BLEU-4" in table
    from PIL import Image

    assert Image.open(out / "evaluation.png").height > 1300  # three rows of panels, not two (990 px)


def test_evaluate_makes_missing_output_folders_and_says_where_the_reports_are(tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    runner = CliRunner()
    runner.invoke(cli, ["truth", "import", str(IU_CSV / "indiana_reports.csv"), str(IU_CSV / "indiana_projections.csv"),
                        "--split-file", str(IU_CSV / "r2gen_split.csv")], env=env)
    out = tmp_path / "out" / "eval3"  # neither folder exists (as in the README's example)
    made = runner.invoke(cli, ["evaluate", "--baseline", "most-frequent", "--split", "test", "--no-meteor",
                               "-o", str(out)], env=env)
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "evaluation.png"]
    (tmp_path / "a-file").write_text("")
    refused = runner.invoke(cli, ["evaluate", "--baseline", "most-frequent", "-o", str(tmp_path / "a-file" / "x")],
                            env=env)
    assert refused.exit_code == 2 and f"{tmp_path / 'a-file'} is a file, not a folder" in refused.output

    predictions = tmp_path / "p.jsonl"  # studies of the bundled examples: in the train split, none in test
    predictions.write_text("".join(json.dumps({"study_id": uid, "report": "The lungs are clear."}) + "\n"
                                   for uid in ("7", "25", "54")))
    wrong = runner.invoke(cli, ["evaluate", "--predictions", str(predictions), "--split", "test", "--no-meteor"],
                          env=env)
    assert wrong.exit_code == 1
    assert "none of the 3 reports has ground truth in split 'test' of collection 'iu' (findings); they are in " \
           "split 'train' (3)" in wrong.output, wrong.output
