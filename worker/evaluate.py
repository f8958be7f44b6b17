"""Ground truth in, evaluations out: moves texts between db/ and model/'s scoring, for CLI and Celery alike."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import evaluations as db_evals
from db import queries
from db import truth as db_truth
from db.engine import Database
from db.jobs import get_job
from worker import runtime
from worker.errors import EvaluationInputError
from worker.settings import Settings

if TYPE_CHECKING:
    # The rest of model/ is imported where used: the scorers pull in NLTK and pycocoevalcap, the CSV
    # readers pandas; scoring stored reports (the backlog, `xrq evaluate --job`) never needs pandas.
    from model.metrics.evaluation import EvaluationResult

BASELINES = ("most-frequent",)
# Fewer predictions than this share matching a ground-truth study: the ids are of another kind
# (database ids, accession numbers), and scoring them would compare reports of different studies.
MIN_MATCHED_FRACTION = 0.5
STAGES = ("reading ground truth", "reading reports", "scoring", "labelling findings", "storing", "writing files")


def import_iu(settings: Settings, reports_csv: str | Path, projections_csv: str | Path | None, *,
              split_file: str | Path | None = None, seed: int = 0,
              collection: str = "iu") -> db_truth.ImportCounts:
    """Load the IU CSVs as ground truth: benchmark split from `split_file`, else a seeded random 80/20."""
    from model.datasets.iu import benchmark_split, random_split, read_iu

    studies = read_iu(reports_csv, projections_csv)
    split = benchmark_split(split_file) if split_file else random_split(studies, seed)
    rows = [db_truth.TruthIn(uid=s.uid, findings=s.findings, impression=s.impression, mesh=s.mesh,
                             indication=s.indication, comparison=s.comparison, split=split.get(s.uid),
                             images=s.images) for s in studies.values()]
    return db_truth.import_truth(runtime.database(settings.database_url), collection, rows)


def import_csv(settings: Settings, path: str | Path, *, collection: str, id_column: str = "study_id",
               report_column: str = "report", seed: int = 0) -> db_truth.ImportCounts:
    """Any CSV with a study id and a report: the report is stored as findings, with a seeded 80/20 split."""
    from model.datasets.iu import random_split, read_reports_csv

    reports = read_reports_csv(path, id_column, report_column)
    split = random_split(reports, seed)
    rows = [db_truth.TruthIn(uid=uid, findings=text, split=split[uid]) for uid, text in reports.items()]
    return db_truth.import_truth(runtime.database(settings.database_url), collection, rows)


@dataclass(frozen=True)
class Matched:
    """How the reports met the ground truth: `given`, `known` to the collection (any split), `scored`."""

    given: int
    known: int
    scored: int
    id_column: str | None = None  # for predictions: the column the ids were read from

    def as_dict(self) -> dict[str, Any]:
        return {"given": self.given, "with_truth": self.known, "scored": self.scored, "id_column": self.id_column}


@dataclass
class EvaluationRun:
    evaluation_id: int
    result: EvaluationResult
    source: str
    source_ref: str
    collection: str
    split: str | None
    text: str
    without_truth: int  # reports left out: no ground truth (or not in the split)
    files: list[Path]
    matched: Matched = field(default_factory=lambda: Matched(0, 0, 0))

    def summary(self) -> dict[str, Any]:
        return {"evaluation_id": self.evaluation_id, "source": self.source, "source_ref": self.source_ref,
                "collection": self.collection, "split": self.split, "text": self.text,
                "without_truth": self.without_truth, "matched": self.matched.as_dict(), **self.result.summary(),
                "files": [str(p) for p in self.files]}


@dataclass(frozen=True)
class _Hypotheses:
    """The system being scored: its reports by uid, and where they came from."""

    source: str
    ref: str
    reports: dict[str, str]
    study_ids: dict[str, int] = field(default_factory=dict)  # uid -> database id, for stored reports
    model_id: int | None = None
    id_column: str | None = None
    given: int | None = None  # reports read, when only those with ground truth were kept (stored reports)
    confidence: dict[str, float | None] = field(default_factory=dict)  # uid -> the report's confidence


def run_evaluation(
    settings: Settings, *, job_id: int | None = None, model: str | None = None, predictions: str | None = None,
    baseline: str | None = None, split: str | None = None, text: str = "findings", collection: str | None = None,
    id_column: str | None = None, report_column: str = "report", with_meteor: bool = True,
    out_dir: str | Path | None = None, on_stage: Callable[[str, int, int], None] | None = None,
) -> EvaluationRun:
    """Score one system's reports against the stored ground truth and store the run.

    `out_dir` (made if absent, inside a folder that exists) is checked before any work, so a run
    is never stored and then lost to an unwritable folder. Predictions must mostly name studies of
    the ground truth (see MIN_MATCHED_FRACTION); `id_column` None picks `uid` when the file has it.
    `on_stage(name, done, total)` is called as each of STAGES begins (a progress bar).
    """
    from model.metrics.evaluation import evaluate, reference_text
    from model.metrics.sections import section_text

    chosen = [k for k, v in (("job", job_id), ("model", model), ("predictions", predictions),
                             ("baseline", baseline)) if v is not None]
    if len(chosen) != 1:
        raise EvaluationInputError("say what to score: exactly one of --job, --model, --predictions, --baseline")
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    stages = STAGES if out_dir is not None else STAGES[:-1]

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name, stages.index(name), len(stages))

    stage("reading ground truth")
    db = runtime.database(settings.database_url)
    coll = db_truth.default_collection(db, collection)
    truth = db_truth.truth_rows(db, coll, split=split)
    references = {uid: t for uid, t in ((u, reference_text(r.findings, r.impression, text))
                                        for u, r in truth.items()) if t}
    train = [t for t in (reference_text(r.findings, r.impression, text)
                         for r in db_truth.truth_rows(db, coll, split="train").values()) if t]
    stage("reading reports")
    hyps = _hypotheses(db, chosen[0], job_id, model, predictions, baseline, references, train, id_column,
                       report_column, coll)
    written = hyps.reports  # as stored or given; scored below is the part that answers `text`
    hyps = replace(hyps, reports={uid: section_text(t, text) for uid, t in written.items()})
    scored = {uid: h for uid, h in hyps.reports.items() if uid in references}
    given = hyps.given if hyps.given is not None else len(hyps.reports)
    matched = _match(db, coll, hyps, len(scored))
    if not scored:
        where = f"split {split!r} of " if split else ""
        splits: dict[str, int] = {}
        for row in db_truth.truth_rows(db, coll, uids=list(hyps.reports)).values():
            name = f"split {row.split!r}" if row.split else "no split"
            splits[name] = splits.get(name, 0) + 1
        found = (f"; they are in {', '.join(f'{k} ({n})' for k, n in sorted(splits.items()))}"
                 if split and splits else "")
        raise EvaluationInputError(f"none of the {given} reports has ground truth in {where}collection "
                                   f"{coll!r} ({text}){found}; check --split/--text or import the ground truth")
    result = evaluate(references, scored, train_texts=train, mesh={u: truth[u].mesh for u in scored},
                      with_meteor=with_meteor, on_stage=stage, confidence=hyps.confidence)
    result.sections = _other_section(truth, written, text)
    stage("storing")
    evaluation_id = _store(db, result, hyps, coll, split, text, job_id)
    run = EvaluationRun(evaluation_id, result, hyps.source, hyps.ref, coll, split, text,
                        given - len(scored), [], matched)
    if out_dir is not None:
        stage("writing files")
        run.files = write_outputs(run, Path(out_dir))
    return run


def _other_section(truth: dict[str, Any], written: dict[str, str], text: str) -> dict[str, Any] | None:
    """Sectioned reports scored with `--text findings` (or impression): the other section, against its own
    ground truth, beside the main scores. None when no report has that section."""
    from model.metrics.evaluation import evaluate
    from model.metrics.sections import split_sections

    other = {"findings": "impression", "impression": "findings"}.get(text)
    if other is None:
        return None
    hypotheses, references = {}, {}
    for uid, report in written.items():
        section = getattr(split_sections(report), other)
        reference = getattr(truth[uid], other).strip() if uid in truth else ""
        if section is not None and reference:
            hypotheses[uid], references[uid] = section, reference
    if not hypotheses:
        return None
    result = evaluate(references, hypotheses, with_meteor=False)
    corpus = {k: result.scores.corpus[k] for k in ("bleu_1", "bleu_4", "rouge_l", "cider")}
    return {other: {"n_studies": result.scores.n_studies, **corpus, "distinct_reports": result.scores.distinct_reports,
                    "clinical_f1_micro": result.labels.micro.f1, "clinical_f1_macro": result.labels.macro.f1}}


def check_out_dir(out_dir: Path) -> None:
    """Raise EvaluationInputError unless `out_dir` is a writable folder or can be made as one, alone."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise EvaluationInputError(f"{out_dir} is a file; name a folder for the evaluation's files")
        target = out_dir
    else:  # made with its missing parents: the nearest existing one must be a writable folder
        target = out_dir.absolute().parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise EvaluationInputError(f"cannot make {out_dir}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise EvaluationInputError(f"cannot write to {target} (no permission)")


def _match(db: Database, coll: str, hyps: _Hypotheses, scored: int) -> Matched:
    """Count the reports that name a study of the collection; refuse predictions whose ids mostly don't."""
    if hyps.given is not None:  # streamed from the database: only the reports with ground truth were kept
        matched = Matched(hyps.given, len(hyps.reports), scored, hyps.id_column)
    else:
        known = db_truth.truth_rows(db, coll, uids=list(hyps.reports)) if hyps.reports else {}
        matched = Matched(len(hyps.reports), len(known), scored, hyps.id_column)
    if hyps.source == "predictions" and matched.known < MIN_MATCHED_FRACTION * matched.given:
        theirs = ", ".join(repr(u) for u in sorted(hyps.reports)[:3])
        ours = ", ".join(repr(u) for u in sorted(db_truth.truth_rows(db, coll))[:3])
        raise EvaluationInputError(
            f"only {matched.known} of {matched.given} predictions in {hyps.ref} name a study of ground truth "
            f"{coll!r} by their {hyps.id_column!r} (theirs: {theirs}; the ground truth's: {ours}); "
            "choose the column that holds the study uid with --id-column, or import the matching ground truth")
    return matched


def _hypotheses(db: Database, kind: str, job_id: int | None, model: str | None, predictions: str | None,
                baseline: str | None, references: dict[str, str], train: list[str], id_column: str | None,
                report_column: str, coll: str) -> _Hypotheses:
    """The reports of the system being scored, by uid.

    Stored reports are streamed, and only those whose study has ground truth in the collection are
    kept: memory follows the ground truth, not the millions of reports a job or model may have.
    """
    from db import listing

    if kind == "job":
        assert job_id is not None
        rows = ((r.uid, r.study_id, r.text, r.confidence)
                for r in listing.report_rows(db, queries.ReportFilter(job_id=job_id), images=False))
        return _stored("job", str(job_id), rows, set(db_truth.truth_rows(db, coll)), _job_model(db, job_id))
    if kind == "model":
        assert model is not None
        found = db_evals.find_model(db, model)
        return _stored("model", found.name, listing.model_reports(db, found.id), set(db_truth.truth_rows(db, coll)),
                       found.id)
    if kind == "predictions":
        from model.datasets.iu import read_predictions

        assert predictions is not None
        read = read_predictions(predictions, id_column, report_column)
        return _Hypotheses("predictions", str(predictions), read.reports, id_column=read.id_column,
                           confidence=dict(read.confidence))
    if baseline not in BASELINES:
        raise EvaluationInputError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if not train:
        raise EvaluationInputError("the most-frequent baseline needs a train split in the ground truth")
    from model.metrics.evaluation import constant_baseline

    return _Hypotheses("baseline", str(baseline), constant_baseline(train, references))


def _stored(source: str, ref: str, rows: Iterable[tuple[str, int, str, float | None]], known: set[str],
            model_id: int) -> _Hypotheses:
    """Hypotheses from (uid, study id, report, confidence) rows, keeping those with ground truth (the later
    of a repeated uid)."""
    reports: dict[str, str] = {}
    study_ids: dict[str, int] = {}
    confidence: dict[str, float | None] = {}
    given = 0
    for uid, study_id, text, sure in rows:
        given += 1
        if uid in known:
            reports[uid], study_ids[uid], confidence[uid] = text, study_id, sure
    return _Hypotheses(source, ref, reports, study_ids, model_id, given=given, confidence=confidence)


def _job_model(db: Database, job_id: int) -> int:
    return get_job(db, job_id).model_id


def _store(db: Database, result: EvaluationResult, hyps: _Hypotheses, coll: str, split: str | None,
           text: str, job_id: int | None) -> int:
    s = result.scores
    source, study_ids, model_id = hyps.source, hyps.study_ids, hyps.model_id
    return db_evals.store_evaluation(db, db_evals.EvaluationIn(
        source=source, source_ref=hyps.ref, collection=coll, split=split, text=text, corpus=s.corpus,
        distinct_reports=s.distinct_reports, scores=result.summary(), settings=result.protocol,
        per_study=s.per_study, references=s.references, hypotheses=s.hypotheses,
        study_ids={u: i for u, i in study_ids.items() if u in s.hypotheses},
        clinical_f1_micro=result.labels.micro.f1, clinical_f1_macro=result.labels.macro.f1,
        normal_accuracy=result.normal.accuracy if result.normal else None, model_id=model_id,
        job_id=job_id if source == "job" else None,
    ))


def write_outputs(run: EvaluationRun, out_dir: Path) -> list[Path]:
    """evaluation.json (corpus and per-study scores) and evaluation.png (the figure).

    `out_dir` is made if absent, never its parents: a mistyped path fails instead of growing folders.
    """
    from model.figures.plots import plot_evaluation

    out_dir.mkdir(parents=True, exist_ok=True)
    data = {**run.summary(), "per_study": {
        uid: {"reference": run.result.scores.references[uid], "hypothesis": run.result.scores.hypotheses[uid],
              **scores} for uid, scores in run.result.scores.per_study.items()}}
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    split = f", split {run.split}" if run.split else ""
    title = f"xrq evaluation {run.evaluation_id}: {run.source} {run.source_ref} ({run.collection}{split}, {run.text})"
    figure = plot_evaluation(run.result, out_dir / "evaluation.png", title=title)
    return [json_path, figure]
