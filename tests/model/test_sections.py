"""Report sections: markers in, sections out, and each section scored against its own ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.inference.confidence import Draft
from model.metrics.sections import Sections, join_sections, section_text, split_sections, without_markers
from tests.conftest import IU_CSV


def test_a_sectioned_report_splits_back_into_its_sections() -> None:
    report = join_sections("The heart is normal.\n  Lungs are clear.", "No acute disease.")
    assert report == "FINDINGS: The heart is normal. Lungs are clear. IMPRESSION: No acute disease."
    assert split_sections(report) == Sections("The heart is normal. Lungs are clear.", "No acute disease.")
    assert join_sections("", "No acute disease.") == "IMPRESSION: No acute disease."
    assert split_sections("IMPRESSION: No acute disease.") == Sections(None, "No acute disease.")
    assert split_sections("findings : clear. impression: fine") == Sections("clear.", "fine")
    assert split_sections("The heart is normal.") == Sections(None, None)
    assert split_sections("FINDINGS: IMPRESSION: normal") == Sections("", "normal")
    assert without_markers(report) == "The heart is normal. Lungs are clear. No acute disease."


def test_the_scored_part_follows_the_ground_truths_section() -> None:
    report = "FINDINGS: The heart is normal. IMPRESSION: No acute disease."
    assert section_text(report, "findings") == "The heart is normal."
    assert section_text(report, "impression") == "No acute disease."
    assert section_text(report, "both") == "The heart is normal. No acute disease."
    assert section_text("IMPRESSION: No acute disease.", "findings") == ""  # it wrote no findings
    assert section_text("The heart is normal.", "impression") == "The heart is normal."  # not sectioned


def test_a_draft_records_its_sections() -> None:
    record = Draft("FINDINGS: Clear lungs. IMPRESSION: Normal.", (1, 2), (-0.1, -0.2)).record()
    assert (record["findings"], record["impression"]) == ("Clear lungs.", "Normal.")
    assert Draft("Clear lungs.", (1,), (-0.1,)).record()["findings"] is None


def test_evaluate_scores_each_section_against_its_own_truth(sqlite_url: str, tmp_path: Path) -> None:
    from db.truth import truth_rows
    from worker import runtime
    from worker.evaluate import import_iu, run_evaluation
    from worker.settings import Settings

    settings = Settings(database_url=sqlite_url)
    import_iu(settings, IU_CSV / "indiana_reports.csv", IU_CSV / "indiana_projections.csv",
              split_file=IU_CSV / "r2gen_split.csv")
    truth = truth_rows(runtime.database(sqlite_url), "iu", split="test")
    uids = sorted(u for u, t in truth.items() if t.findings and t.impression)[:30]
    # Findings right, impressions of other studies: the findings score perfectly, the impressions don't.
    predictions = {u: join_sections(truth[u].findings, truth[uids[(i + 1) % len(uids)]].impression)
                   for i, u in enumerate(uids)}
    path = tmp_path / "sectioned.jsonl"
    path.write_text("".join(json.dumps({"uid": u, "report": r}) + "\n" for u, r in predictions.items()))
    findings = run_evaluation(settings, predictions=str(path), split="test", with_meteor=False)
    assert all("impression" not in h.lower() for h in findings.result.scores.hypotheses.values())
    # The findings section against the findings truth (< 1: the benchmark protocol maps rare words to <unk>).
    assert findings.result.scores.corpus["bleu_4"] > 0.9  # type: ignore[operator]
    beside = findings.result.sections["impression"]  # type: ignore[index]
    assert beside["n_studies"] == 30 and beside["bleu_4"] < 0.5
    impression = run_evaluation(settings, predictions=str(path), split="test", text="impression", with_meteor=False)
    assert impression.result.scores.corpus["bleu_4"] < 0.5  # type: ignore[operator]
    assert impression.result.sections["findings"]["bleu_4"] > 0.9  # type: ignore[index]
    assert impression.summary()["sections"]["findings"]["n_studies"] == 30


@pytest.mark.slow
def test_a_two_section_model_writes_both_sections(tmp_path: Path) -> None:
    """`--text both`: a tiny model memorising the bundled studies writes findings and impression apart."""
    from model.imaging.images import decode
    from model.inference.confidence import draft
    from model.inference.generate import GenerationSettings
    from model.network.store import load
    from model.training.data import load_data
    from model.training.loop import TrainConfig, train
    from tests.conftest import EXAMPLES

    reports, projections = str(IU_CSV / "indiana_reports.csv"), str(IU_CSV / "indiana_projections.csv")
    config = TrainConfig(reports=reports, projections=projections, images=str(EXAMPLES), tokenizer="train",
                         split="all", text="both", max_steps=60, batch_size=11, lr=3e-3, warmup=5, dropout=0.0,
                         eval_every=60, max_tokens=128, seed=0, init_std=0.0)
    assert train(config, tmp_path / "run").finished
    data = load_data(reports, projections, EXAMPLES, text="both", views="all", split="all", seed=0)
    assert all(e.text.startswith(("FINDINGS: ", "IMPRESSION: ")) for e in data.train)
    bundle = load(tmp_path / "run" / "best", device="cpu")
    written = draft(bundle, [[decode(p) for p in e.images] for e in data.train], GenerationSettings(max_new_tokens=128))
    both = [e for e, d in zip(data.train, written, strict=True) if "FINDINGS:" in e.text and "IMPRESSION:" in e.text]
    sections = {e.uid: d.record() for e, d in zip(data.train, written, strict=True)}
    assert len(both) >= 7
    wrote_both = [e.uid for e in both if sections[e.uid]["findings"] and sections[e.uid]["impression"]]
    assert len(wrote_both) >= len(both) - 1, sections
    truth = split_sections(next(e.text for e in data.train if e.uid == "7"))
    assert (sections["7"]["findings"], sections["7"]["impression"]) == (truth.findings, truth.impression)
