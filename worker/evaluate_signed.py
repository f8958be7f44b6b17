"""`xrq evaluate --truth signed`: the drafts scored against what radiologists signed.

Per model and per job: how many drafts were signed as they were (`accepted_unchanged`), how many
words were changed (mean and distribution), the field's metrics with the signed text as the
reference, and why drafts were rejected. Each group is stored as an evaluation (source `signed`,
collection `signed`), with its per-study rows (hypothesis: the draft, reference: the signed text).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import evaluations as db_evals
from db import review as db_review
from worker import runtime
from worker.errors import EvaluationInputError
from worker.evaluate import check_out_dir
from worker.settings import Settings

if TYPE_CHECKING:
    from model.metrics.evaluation import EvaluationResult
    from model.metrics.review import ReviewStats

STAGES = ("reading reviews", "scoring", "storing", "writing files")


@dataclass
class SignedGroup:
    kind: str  # model | job
    ref: str  # the model's name, or the job id
    stats: ReviewStats
    result: EvaluationResult | None  # None when nothing of the group was signed
    evaluation_id: int | None = None

    def summary(self) -> dict[str, Any]:
        scores = self.result.summary() if self.result is not None else None
        return {"group": self.kind, "ref": self.ref, "evaluation_id": self.evaluation_id, **self.stats.as_dict(),
                "scores_vs_signed": scores}


@dataclass
class SignedRun:
    groups: list[SignedGroup]
    files: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"truth": "signed", "groups": [g.summary() for g in self.groups], "files": [str(p) for p in self.files]}


def run_signed_evaluation(settings: Settings, *, job_id: int | None = None, model: str | None = None,
                          with_meteor: bool = True, out_dir: str | Path | None = None,
                          on_stage: Callable[[str, int, int], None] | None = None) -> SignedRun:
    """Score every signed (and count every rejected) draft, of a job or a model or all, per model and per job."""
    from model.metrics.review import ReviewOutcome, review_stats

    if out_dir is not None:
        check_out_dir(Path(out_dir))
    stages = STAGES if out_dir is not None else STAGES[:-1]

    def stage(name: str) -> None:
        if on_stage is not None and name in stages:
            on_stage(name, stages.index(name), len(stages))

    stage("reading reviews")
    db = runtime.database(settings.database_url)
    model_id = db_evals.find_model(db, model).id if model is not None else None
    rows = db_review.reviewed(db, job_id=job_id, model_id=model_id)
    if not rows:
        raise EvaluationInputError("no draft has been signed or rejected yet" + (
            f" in job {job_id}" if job_id is not None else f" of model {model}" if model else "")
            + ": review drafts in `xrq serve` first")
    groups: dict[tuple[str, str], list[db_review.Reviewed]] = {}
    for r in rows:
        groups.setdefault(("model", r.model), []).append(r)
        groups.setdefault(("job", str(r.job_id)), []).append(r)
    stage("scoring")
    done = []
    for (kind, ref), members in groups.items():
        keyed = _keys(members)
        outcomes = [ReviewOutcome(keyed[r.report_id], r.draft, r.state, r.final_text, r.reject_reason) for r in members]
        stats = review_stats(outcomes)
        done.append(SignedGroup(kind, ref, stats, _score(members, keyed, with_meteor)))
    stage("storing")
    for group in done:
        if group.result is not None:
            group.evaluation_id = _store(db, group, [r for r in rows if _member(group, r)])
    run = SignedRun(done)
    if out_dir is not None:
        stage("writing files")
        run.files = write_outputs(run, Path(out_dir))
    return run


def _member(group: SignedGroup, r: db_review.Reviewed) -> bool:
    return r.model == group.ref if group.kind == "model" else str(r.job_id) == group.ref


def _keys(members: list[db_review.Reviewed]) -> dict[int, str]:
    """report id -> a key unique in the group: the uid, with the report id when a uid repeats."""
    seen: set[str] = set()
    keys = {}
    for r in members:
        keys[r.report_id] = r.uid if r.uid not in seen else f"{r.uid}#{r.report_id}"
        seen.add(r.uid)
    return keys


def _score(members: list[db_review.Reviewed], keyed: dict[int, str], with_meteor: bool) -> EvaluationResult | None:
    from model.metrics.evaluation import evaluate

    signed = [r for r in members if r.state == "signed" and r.final_text]
    if not signed:
        return None
    return evaluate({keyed[r.report_id]: r.final_text or "" for r in signed},
                    {keyed[r.report_id]: r.draft for r in signed}, with_meteor=with_meteor)


def _store(db: Any, group: SignedGroup, members: list[db_review.Reviewed]) -> int:
    result = group.result
    assert result is not None
    s = result.scores
    keyed = _keys(members)
    return db_evals.store_evaluation(db, db_evals.EvaluationIn(
        source="signed", source_ref=f"{group.kind} {group.ref}", collection="signed", split=None, text="signed",
        corpus=s.corpus, distinct_reports=s.distinct_reports,
        scores={**result.summary(), "review": group.stats.as_dict()}, settings=result.protocol,
        per_study=s.per_study, references=s.references, hypotheses=s.hypotheses,
        study_ids={keyed[r.report_id]: r.study_id for r in members if keyed[r.report_id] in s.hypotheses},
        clinical_f1_micro=result.labels.micro.f1, clinical_f1_macro=result.labels.macro.f1,
        model_id=members[0].model_id if members else None,
        job_id=int(group.ref) if group.kind == "job" else None))


def write_outputs(run: SignedRun, out_dir: Path) -> list[Path]:
    """evaluation.json and evaluation.png (acceptance, edit distances, scores and rejection reasons)."""
    from model.figures.review import plot_signed

    out_dir.mkdir(exist_ok=True)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(run.summary(), indent=2, default=str), encoding="utf-8")
    figure = plot_signed([g.summary() for g in run.groups], out_dir / "evaluation.png")
    return [json_path, figure]


def signed_text(run: SignedRun) -> str:
    """The run for people: one block per group."""
    from model.printable import printable

    lines = []
    for g in run.groups:
        st = g.stats
        head = f"{g.kind} {printable(g.ref)}: {st.reviewed} reviewed, {st.signed} signed, {st.rejected} rejected"
        lines.append(head + (f" (evaluation {g.evaluation_id})" if g.evaluation_id else ""))
        if st.accepted_unchanged is not None:
            e = st.edit_distance
            lines.append(f"  accepted unchanged: {st.accepted_unchanged:.1%} of signed")
            lines.append(f"  words changed: mean {e['mean']:.1f}, median {e['median']:.0f}, p90 {e['p90']:.0f}, "
                         f"max {e['max']}; " + ", ".join(f"{k}: {v}" for k, v in e["histogram"].items()))
        if g.result is not None:
            c = g.result.scores.corpus
            lines.append(f"  vs signed text: BLEU-4 {c['bleu_4']:.3f}, ROUGE-L {c['rouge_l']:.3f}, CIDEr "
                         f"{c['cider']:.3f}, clinical F1 micro {g.result.labels.micro.f1:.3f}")
        for reason, n in st.rejection_reasons[:5]:
            lines.append(f"  rejected {n}x: {printable(reason)}")
    lines += [f"wrote {printable(str(p))}" for p in run.files]
    return "\n".join(lines)
