"""`xrq evaluate --truth signed`: drafts against what radiologists signed, per model and per job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from db import review
from db.accounts import by_name
from model.metrics.review import ReviewOutcome, review_stats, word_edit_distance, words
from tests.web.conftest import make_site


def test_word_edit_distance() -> None:
    assert word_edit_distance(words("No pleural effusion."), words("no pleural effusion")) == 0
    assert word_edit_distance(words("Small left effusion."), words("Small right effusion.")) == 1
    assert word_edit_distance(words("a b c"), words("a c")) == 1
    assert word_edit_distance(words(""), words("one two three")) == 3
    assert word_edit_distance(words("kitten sitting on"), words("sitting on the mat")) == 3


def test_review_stats_counts_unchanged_edits_and_reasons() -> None:
    stats = review_stats([
        ReviewOutcome("1", "Heart normal. Lungs clear.", "signed", "Heart normal.\nLungs clear."),
        ReviewOutcome("2", "Small left effusion.", "signed", "Small right effusion."),
        ReviewOutcome("3", "Mild cardiomegaly.", "rejected", reason="Wrong side."),
        ReviewOutcome("4", "Edema.", "rejected", reason="wrong side"),
    ])
    assert (stats.reviewed, stats.signed, stats.rejected, stats.accepted_unchanged) == (4, 2, 2, 0.5)
    assert stats.edit_distance["mean"] == 0.5 and stats.edit_distance["histogram"]["0"] == 1
    assert stats.edit_distance["histogram"]["1-2"] == 1
    assert stats.rejection_reasons == [("wrong side", 2)]


@pytest.mark.slow
def test_evaluate_truth_signed(sqlite_url: str, tmp_path: Path) -> None:
    _, db, seeded = make_site(sqlite_url, tmp_path)
    alice = by_name(db, "alice")
    assert alice is not None
    ids = seeded.report_ids
    runner = CliRunner()
    base = ["--database-url", sqlite_url]
    none = runner.invoke(cli, [*base, "evaluate", "--truth", "signed", "--no-meteor"])
    assert none.exit_code == 1 and "no draft has been signed or rejected yet" in none.output
    review.submit(db, ids["1000"], base_version=0, action="sign", author_id=alice.id,
                  text="The heart is normal in size. The lungs are clear. No pleural effusion.")
    review.submit(db, ids["1002"], base_version=0, action="sign", author_id=alice.id,
                  text="No acute cardiopulmonary abnormality. Old rib fracture on the left.")
    review.submit(db, ids["1001"], base_version=0, action="reject", text="", reason="Wrong side", author_id=alice.id)
    out = tmp_path / "signed"
    result = runner.invoke(cli, [*base, "evaluate", "--truth", "signed", "--no-meteor", "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    groups = {(g["group"], g["ref"]): g for g in data["groups"]}
    assert set(groups) == {("model", "demo"), ("job", str(seeded.job_id))}
    g = groups[("model", "demo")]
    assert (g["reviewed"], g["signed"], g["rejected"], g["accepted_unchanged"]) == (3, 2, 1, 0.5)
    assert g["word_edit_distance"]["mean"] == 3.0  # none changed in one, 6 words added to the other
    assert g["word_edit_distance"]["histogram"] == {"0": 1, "1-2": 0, "3-5": 0, "6-10": 1, "11-20": 0, "21+": 0}
    assert g["rejection_reasons"] == [{"reason": "wrong side", "count": 1}]
    assert 0 < g["scores_vs_signed"]["bleu_4"] < 1 and g["evaluation_id"] is not None
    assert (out / "evaluation.png").stat().st_size > 10_000 and (out / "evaluation.json").exists()
    with db.session() as s:
        from sqlalchemy import text

        stored = s.execute(text("SELECT source, source_ref, collection, n_studies FROM evaluations ORDER BY id")).all()
    assert [tuple(r) for r in stored] == [("signed", "model demo", "signed", 2),
                                          ("signed", f"job {seeded.job_id}", "signed", 2)]
    people = runner.invoke(cli, [*base, "evaluate", "--truth", "signed", "--no-meteor", "--job", str(seeded.job_id)])
    assert "accepted unchanged: 50.0% of signed" in people.output and "rejected 1x: wrong side" in people.output
    bad = runner.invoke(cli, [*base, "evaluate", "--truth", "signed", "--split", "test"])
    assert bad.exit_code == 2
