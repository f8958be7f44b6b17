"""Storing evaluation runs (corpus and per-study scores) and fetching what they score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select

from db.bulk import insert_ignore
from db.engine import Database
from db.errors import NotFoundError
from db.schema import Evaluation, EvaluationScore, Model

METRIC_COLUMNS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
PER_STUDY_COLUMNS = ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider")


@dataclass(frozen=True)
class EvaluationIn:
    source: str
    source_ref: str
    collection: str
    split: str | None
    text: str
    corpus: Mapping[str, float | None]  # METRIC_COLUMNS at least
    distinct_reports: int
    scores: dict[str, Any]  # everything else, JSON-ready
    settings: dict[str, Any]
    per_study: Mapping[str, Mapping[str, float]]  # uid -> metric -> value
    references: Mapping[str, str]
    hypotheses: Mapping[str, str]
    study_ids: Mapping[str, int] = field(default_factory=dict)  # uid -> studies.id, when known
    clinical_f1_micro: float | None = None
    clinical_f1_macro: float | None = None
    normal_accuracy: float | None = None
    model_id: int | None = None
    job_id: int | None = None


def store_evaluation(db: Database, ev: EvaluationIn) -> int:
    """One evaluation run and its per-study rows, in one transaction; returns its id."""
    with db.session() as s:
        row = Evaluation(
            source=ev.source, source_ref=ev.source_ref, model_id=ev.model_id, job_id=ev.job_id,
            collection=ev.collection, split=ev.split, text=ev.text, n_studies=len(ev.hypotheses),
            distinct_reports=ev.distinct_reports, clinical_f1_micro=ev.clinical_f1_micro,
            clinical_f1_macro=ev.clinical_f1_macro, normal_accuracy=ev.normal_accuracy,
            scores=ev.scores, settings=ev.settings, **{k: ev.corpus[k] for k in METRIC_COLUMNS},
        )
        s.add(row)
        s.flush()
        insert_ignore(s, EvaluationScore, [
            {"evaluation_id": row.id, "uid": uid, "study_id": ev.study_ids.get(uid),
             "hypothesis": ev.hypotheses[uid], "reference": ev.references[uid],
             **{k: ev.per_study.get(uid, {}).get(k) for k in PER_STUDY_COLUMNS}}
            for uid in ev.hypotheses
        ], ["evaluation_id", "uid"])
        return row.id


def find_model(db: Database, name: str) -> Model:
    """A model by name, path or fingerprint prefix (at least 8 characters); the newest if several share a name."""
    with db.session() as s:
        conditions = [Model.name == name, Model.path == name]
        if len(name) >= 8:
            conditions.append(Model.fingerprint.startswith(name))
        found = s.scalars(select(Model).where(or_(*conditions)).order_by(Model.id.desc())).first()
        if found is None:
            raise NotFoundError(f"no model {name!r} has reports here; models are listed in the `models` table")
        return found
