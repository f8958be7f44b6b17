"""Ground truth import and evaluation runs, through the database, on real IU data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from matplotlib.figure import Figure
from PIL import Image
from sqlalchemy import func, select

from db.schema import Evaluation, EvaluationScore, Truth, TruthImage
from model.metrics.evaluation import evaluate
from tests.conftest import IU_CSV
from worker import runtime
from worker.errors import EvaluationInputError
from worker.evaluate import import_csv, import_iu, run_evaluation
from worker.settings import Settings
from worker.submit import submit_folder

PUBLISHED = {"bleu_1": 0.242, "bleu_4": 0.081, "meteor": 0.120, "rouge_l": 0.312, "cider": 0.344}


def import_benchmark(settings: Settings) -> None:
    import_iu(settings, IU_CSV / "indiana_reports.csv", IU_CSV / "indiana_projections.csv",
              split_file=IU_CSV / "r2gen_split.csv")


def test_importing_twice_changes_nothing(db_url: str) -> None:
    settings = Settings(database_url=db_url)
    first = import_iu(settings, IU_CSV / "indiana_reports.csv", IU_CSV / "indiana_projections.csv",
                      split_file=IU_CSV / "r2gen_split.csv")
    assert (first.added, first.images_added) == (3851, 7466)
    second = import_iu(settings, IU_CSV / "indiana_reports.csv", IU_CSV / "indiana_projections.csv",
                       split_file=IU_CSV / "r2gen_split.csv")
    assert (second.added, second.changed, second.unchanged, second.images_added) == (0, 0, 3851, 0)
    with runtime.database(db_url).session() as s:
        splits = dict(s.execute(select(Truth.split, func.count()).group_by(Truth.split)).all())
        assert splits == {"train": 2069, "val": 296, "test": 590, None: 3851 - 2955}
        assert s.scalar(select(func.count()).select_from(TruthImage)) == 7466
        row = s.scalars(select(Truth).where(Truth.uid == "1")).one()
        assert row.findings.startswith("The cardiac silhouette and mediastinum size are within normal limits")
    # The seeded random protocol instead: 80/20, the same every time.
    again = import_iu(settings, IU_CSV / "indiana_reports.csv", None, seed=7)
    assert again.added == 0 and again.changed > 0
    with runtime.database(db_url).session() as s:
        test = s.scalar(select(func.count()).select_from(Truth).where(Truth.split == "test"))
        assert test == round(3851 * 0.2)


def test_constant_baseline_reproduces_the_published_scores(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url)
    import_benchmark(settings)
    run = run_evaluation(settings, baseline="most-frequent", split="test", out_dir=tmp_path / "out")
    corpus = run.result.scores.corpus
    for key, value in PUBLISHED.items():
        assert corpus[key] == pytest.approx(value, abs=0.002), key
    assert run.result.scores.n_studies == 590 and run.result.scores.distinct_reports == 1
    with runtime.database(sqlite_url).session() as s:
        stored = s.get(Evaluation, run.evaluation_id)
        assert stored is not None and stored.bleu_4 == pytest.approx(corpus["bleu_4"])
        assert s.scalar(select(func.count()).select_from(EvaluationScore)) == 590
    data = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert len(data["per_study"]) == 590 and data["distinct_reports"] == 1
    figure = Image.open(tmp_path / "out" / "evaluation.png").convert("L")
    darkest, _ = cast("tuple[int, int]", figure.getextrema())
    assert figure.size[0] >= 1000 and darkest < 100  # drawn on, not blank


def test_a_job_is_scored_on_its_iu_studies(db_url: str, tiny_model: Path, iu_folder: Path) -> None:
    settings = Settings(database_url=db_url, model=str(tiny_model))
    job = submit_folder(settings, iu_folder).job_id
    import_benchmark(settings)
    run = run_evaluation(settings, job_id=job, text="both", with_meteor=False)
    # The four IU studies of the folder (1000, 54, 7, 25) all have ground truth.
    assert sorted(run.result.scores.hypotheses) == ["1000", "25", "54", "7"]
    assert run.without_truth == 0 and run.result.scores.corpus["meteor"] is None
    with runtime.database(db_url).session() as s:
        study_ids = list(s.scalars(select(EvaluationScore.study_id).order_by(EvaluationScore.uid)))
        assert all(study_ids) and len(study_ids) == 4
    by_model = run_evaluation(settings, model=tiny_model.name, text="both", with_meteor=False)
    assert by_model.result.scores.corpus == run.result.scores.corpus


def test_predictions_from_another_system_score_like_direct_scoring(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url)
    import_benchmark(settings)
    from db.truth import truth_rows

    truth = truth_rows(runtime.database(sqlite_url), "iu", split="test")
    uids = sorted(u for u, t in truth.items() if t.findings)[:40]
    predictions = {u: truth[uids[(i + 1) % len(uids)]].findings for i, u in enumerate(uids)}  # shuffled
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text("".join(json.dumps({"id": u, "text": t}) + "\n" for u, t in predictions.items()))
    run = run_evaluation(settings, predictions=str(jsonl), split="test", id_column="id", report_column="text",
                         with_meteor=False)
    train = [t.findings for t in truth_rows(runtime.database(sqlite_url), "iu", split="train").values()
             if t.findings]
    direct = evaluate({u: truth[u].findings for u in uids}, predictions, train_texts=train, with_meteor=False)
    assert run.result.scores.corpus == direct.scores.corpus
    assert run.result.scores.distinct_reports == direct.scores.distinct_reports > 1


def test_a_generic_csv_is_ground_truth_too(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url)
    csv = tmp_path / "other.csv"
    csv.write_text("accession,text\nA1,No acute disease.\nA2,Small left pleural effusion.\nA3,\n")
    counts = import_csv(settings, csv, collection="other", id_column="accession", report_column="text")
    assert counts.added == 2  # A3 has no report: not ground truth
    preds = tmp_path / "preds.csv"
    preds.write_text("study_id,report\nA1,No acute disease.\nA2,No acute disease.\n")
    run = run_evaluation(settings, predictions=str(preds), collection="other", with_meteor=False)
    assert run.result.scores.n_studies == 2 and run.result.labels.per_observation["Pleural Effusion"].recall == 0


def test_evaluation_errors_say_what_to_do(sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url)
    with pytest.raises(EvaluationInputError, match="exactly one of"):
        run_evaluation(settings)
    from db.errors import NotFoundError

    with pytest.raises(NotFoundError, match="xrq truth import"):
        run_evaluation(settings, baseline="most-frequent")


def test_an_unusable_output_folder_fails_before_the_run_is_stored(sqlite_url: str, tmp_path: Path) -> None:
    """`evaluate -o` used to score, store the run, and only then fail to write its files."""
    settings = Settings(database_url=sqlite_url)
    import_iu(settings, IU_CSV / "indiana_reports.csv", None)
    (tmp_path / "file").write_text("")
    for bad, message in ((tmp_path / "file" / "missing" / "out", "is a file, not a folder"),
                         (tmp_path / "file", "is a file")):
        with pytest.raises(EvaluationInputError, match=message):
            run_evaluation(settings, baseline="most-frequent", with_meteor=False, out_dir=bad)
    with runtime.database(sqlite_url).session() as s:
        assert s.scalar(select(func.count()).select_from(Evaluation)) == 0


def test_each_stage_is_announced_for_a_progress_bar(sqlite_url: str, tmp_path: Path) -> None:
    from worker.evaluate import STAGES

    settings = Settings(database_url=sqlite_url)
    import_iu(settings, IU_CSV / "indiana_reports.csv", None)
    seen: list[tuple[str, int, int]] = []
    run = run_evaluation(settings, baseline="most-frequent", with_meteor=False, out_dir=tmp_path / "out",
                         on_stage=lambda *stage: seen.append(stage))
    assert seen == [(name, done, len(STAGES)) for done, name in enumerate(STAGES)]
    assert run.files == [tmp_path / "out" / "evaluation.json", tmp_path / "out" / "evaluation.png"]


def test_the_figure_gives_cider_its_own_axis_and_unobserved_findings_no_score(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    import model.figures.plots as plots

    refs = {"a": "Stable cardiomegaly.", "b": "Small left pleural effusion.", "c": "Clear lungs."}
    result = evaluate(refs, dict(refs), with_meteor=False)  # perfect: CIDEr far above 1
    drawn: list[Figure] = []

    def keep(fig: Figure, out: str | Path) -> Path:
        drawn.append(fig)
        return Path(out)

    monkeypatch.setattr(plots, "save_figure", keep)
    plots.plot_evaluation(result, tmp_path / "e.png")
    axes = {tuple(t.get_text() for t in ax.get_xticklabels()): ax for ax in drawn[0].axes}
    bounded = next(ax for labels, ax in axes.items() if "BLEU-1" in labels and "ROUGE-L" in labels)
    cider = axes[("CIDEr",)]
    assert bounded.get_ylim()[1] < 1.1 and cider.get_ylim()[1] >= (result.scores.corpus["cider"] or 0) > 5
    clinical = next(ax for ax in drawn[0].axes if ax.get_title().startswith("Clinical"))
    notes = [t.get_text() for t in clinical.texts]
    observed = sum(1 for p in result.labels.per_observation.values() if p.support)
    assert notes.count("n/a (no positive study)") == len(result.labels.per_observation) - observed > 0
    assert result.labels.macro.f1 == pytest.approx(1.0)  # perfect on every observed finding, unobserved left out
    spread = next(ax for ax in drawn[0].axes if ax.get_title().startswith("Per-study"))
    legend = spread.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()][:2] == ["mean", "median"]
