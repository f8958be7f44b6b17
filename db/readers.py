"""Reader studies: two reports of a study side by side, sides randomised, labels hidden; readers pick the
better one (or "equivalent") and mark errors by kind and clinical significance.

A source is `job:ID` (the reports of that job's model) or `truth:COLLECTION` (the imported ground truth).
Cases are drawn and sides placed once, from a seed, when the study is made: every reader sees the same
case with the same sides, and the draw can be repeated.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import Database
from db.review import ImageRow
from db.review_schema import (
    CHOICES,
    ERROR_KINDS,
    ReaderAnswer,
    ReaderCase,
    ReaderError,
    ReaderStudy,
    ReaderStudyError,
    ReaderStudyReader,
    User,
)
from db.schema import Image, Job, JobStudy, Report, Study, Truth

SOURCE = re.compile(r"^(job:[0-9]+|truth:[A-Za-z0-9._-]{1,64})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class StudyPlan:
    name: str
    sources: tuple[str, str]
    readers: tuple[str, ...]
    studies: int
    seed: int = 0


def _texts(s: Session, source: str) -> dict[int, str]:
    """study id -> the source's text for it."""
    kind, _, ref = source.partition(":")
    if kind == "job":
        job = s.get(Job, int(ref))
        if job is None:
            raise ReaderStudyError(f"no job {ref}; `xrq status` lists the jobs")
        rows = s.execute(select(Report.study_id, Report.text).join(JobStudy, JobStudy.study_id == Report.study_id)
                         .where(JobStudy.job_id == job.id, Report.model_id == job.model_id))
        return {sid: text for sid, text in rows if text.strip()}
    truth = {uid: "\n\n".join(p for p in (f.strip(), i.strip()) if p) for uid, f, i in s.execute(
        select(Truth.uid, Truth.findings, Truth.impression).where(Truth.collection == ref))}
    if not truth:
        raise ReaderStudyError(f"no ground truth in collection {ref!r}: `xrq truth import` adds it")
    return {sid: truth[uid] for sid, uid in s.execute(select(Study.id, Study.uid).where(Study.uid.in_(list(truth))))
            if truth[uid]}


def create(db: Database, plan: StudyPlan) -> int:
    """Make a reader study; returns how many cases it has (fewer than asked when fewer studies have both)."""
    if not NAME.match(plan.name):
        raise ReaderStudyError(f"{plan.name!r} is not a study name: letters, digits and . _ - (up to 64)")
    if len(set(plan.sources)) != 2 or not all(SOURCE.match(x) for x in plan.sources):
        raise ReaderStudyError("compare two different sources, each job:ID or truth:COLLECTION")
    jobs = [int(x.split(":")[1]) for x in plan.sources if x.startswith("job:")]
    if not jobs:
        raise ReaderStudyError("at least one source must be a job: its files are the images readers see")
    if not plan.readers or plan.studies < 1:
        raise ReaderStudyError("a reader study needs at least one reader and one study")
    try:
        with db.session() as s:
            users = {u.name: u.id for u in s.scalars(select(User).where(User.name.in_(plan.readers)))}
            missing = sorted(set(plan.readers) - set(users))
            if missing:
                raise ReaderStudyError(f"no user {missing[0]!r}: add readers with `xrq user add` first")
            left, right = (_texts(s, x) for x in plan.sources)
            common = sorted(set(left) & set(right))
            if not common:
                raise ReaderStudyError(f"no study has a report from both {plan.sources[0]} and {plan.sources[1]}")
            rng = random.Random(plan.seed)
            chosen = rng.sample(common, min(plan.studies, len(common)))
            study = ReaderStudy(name=plan.name, sources=list(plan.sources),
                                settings={"studies": plan.studies, "seed": plan.seed, "readers": list(plan.readers)})
            s.add(study)
            s.flush()
            for uid in users.values():
                s.add(ReaderStudyReader(reader_study_id=study.id, user_id=uid))
            a, b = plan.sources
            for position, sid in enumerate(chosen, 1):
                swap = rng.random() < 0.5
                (ls, lt), (rs, rt) = ((b, right[sid]), (a, left[sid])) if swap else ((a, left[sid]), (b, right[sid]))
                s.add(ReaderCase(reader_study_id=study.id, position=position, study_id=sid, image_job_id=jobs[0],
                                 left_source=ls, left_text=lt, right_source=rs, right_text=rt))
            return len(chosen)
    except IntegrityError:
        raise ReaderStudyError(f"there is already a reader study {plan.name!r}") from None


@dataclass(frozen=True)
class Progress:
    name: str
    cases: int
    answered: int
    next_position: int | None


def _study(s: Session, name: str) -> ReaderStudy:
    found = s.scalars(select(ReaderStudy).where(ReaderStudy.name == name)).first()
    if found is None:
        raise ReaderStudyError(f"no reader study {name!r}: `xrq study list` lists them")
    return found


def _case(s: Session, st: ReaderStudy, position: int) -> ReaderCase:
    found = s.scalars(select(ReaderCase).where(ReaderCase.reader_study_id == st.id,
                                               ReaderCase.position == position)).first()
    if found is None:
        raise ReaderStudyError(f"reader study {st.name!r} has no case {position}")
    return found


def _answer_of(s: Session, case_id: int, user_id: int) -> ReaderAnswer | None:
    return s.scalars(select(ReaderAnswer).where(ReaderAnswer.case_id == case_id,
                                                ReaderAnswer.user_id == user_id)).first()


def _is_reader(s: Session, study_id: int, user_id: int) -> bool:
    return s.get(ReaderStudyReader, (study_id, user_id)) is not None


def progress(db: Database, user_id: int) -> list[Progress]:
    """The reader studies of a user, with how far they are."""
    with db.session() as s:
        studies = s.scalars(select(ReaderStudy)
                            .join(ReaderStudyReader, ReaderStudyReader.reader_study_id == ReaderStudy.id)
                            .where(ReaderStudyReader.user_id == user_id).order_by(ReaderStudy.name)).all()
        out = []
        for st in studies:
            positions = list(s.scalars(select(ReaderCase.position).where(ReaderCase.reader_study_id == st.id)
                                       .order_by(ReaderCase.position)))
            done = set(s.scalars(select(ReaderCase.position).join(ReaderAnswer, ReaderAnswer.case_id == ReaderCase.id)
                                 .where(ReaderCase.reader_study_id == st.id, ReaderAnswer.user_id == user_id)))
            todo = [p for p in positions if p not in done]
            out.append(Progress(st.name, len(positions), len(done), todo[0] if todo else None))
        return out


@dataclass(frozen=True)
class CaseView:
    study: str
    position: int
    cases: int
    images: list[ImageRow]
    left: str
    right: str
    preferred: str | None  # this reader's earlier answer: left, right, equivalent
    errors: dict[tuple[str, str], bool] = field(default_factory=dict)  # (side, kind) -> significant


def case(db: Database, name: str, position: int, user_id: int) -> CaseView:
    """A case as a reader sees it: no sources, no ground truth."""
    with db.session() as s:
        st = _study(s, name)
        if not _is_reader(s, st.id, user_id):
            raise ReaderStudyError(f"you are not a reader of {name!r}")
        c = _case(s, st, position)
        total = s.scalar(select(func.count()).select_from(ReaderCase).where(ReaderCase.reader_study_id == st.id)) or 0
        images = [ImageRow(i, rel) for i, rel in s.execute(
            select(Image.id, Image.relpath).where(Image.study_id == c.study_id, Image.job_id == c.image_job_id)
            .order_by(Image.relpath))]
        answer = _answer_of(s, c.id, user_id)
        preferred, errors = None, {}
        if answer is not None:
            side = {c.left_source: "left", c.right_source: "right"}
            preferred = side.get(answer.preferred, "equivalent")
            errors = {(side[e.source], e.kind): e.significant for e in s.scalars(
                select(ReaderError).where(ReaderError.answer_id == answer.id))}
        return CaseView(name, position, total, images, c.left_text, c.right_text, preferred, errors)


def answer(db: Database, name: str, position: int, user_id: int, preferred: str,
           errors: dict[tuple[str, str], bool]) -> int | None:
    """Record (or replace) a reader's answer: `preferred` is left, right or equivalent; `errors` maps
    (side, kind) to whether it is clinically significant. Returns the next unanswered position, if any."""
    if preferred not in CHOICES:
        raise ReaderStudyError("choose the better report, or equivalent")
    for side, kind in errors:
        if side not in ("left", "right") or kind not in ERROR_KINDS:
            raise ReaderStudyError(f"unknown error mark {side} {kind}")
    with db.session() as s:
        st = _study(s, name)
        if not _is_reader(s, st.id, user_id):
            raise ReaderStudyError(f"you are not a reader of {name!r}")
        c = _case(s, st, position)
        source = {"left": c.left_source, "right": c.right_source}
        old = _answer_of(s, c.id, user_id)
        if old is not None:
            s.execute(delete(ReaderError).where(ReaderError.answer_id == old.id))
            s.delete(old)
            s.flush()
        row = ReaderAnswer(case_id=c.id, user_id=user_id, preferred=source.get(preferred, "equivalent"))
        s.add(row)
        s.flush()
        for (side, kind), significant in sorted(errors.items()):
            s.add(ReaderError(answer_id=row.id, source=source[side], kind=kind, significant=significant))
        answered = set(s.scalars(select(ReaderAnswer.case_id).join(ReaderCase, ReaderCase.id == ReaderAnswer.case_id)
                                 .where(ReaderCase.reader_study_id == st.id, ReaderAnswer.user_id == user_id)))
        positions = s.execute(select(ReaderCase.id, ReaderCase.position).where(ReaderCase.reader_study_id == st.id)
                              .order_by(ReaderCase.position)).all()
        return next((pos for cid, pos in positions if cid not in answered), None)


@dataclass(frozen=True)
class StudyAnswers:
    """Everything `xrq study results` computes from."""

    name: str
    sources: tuple[str, str]
    readers: list[str]
    cases: int
    answers: dict[tuple[int, str], str]  # (case position, reader) -> preferred source or "equivalent"
    errors: list[tuple[int, str, str, str, bool]]  # (position, reader, source, kind, significant)


def answers(db: Database, name: str) -> StudyAnswers:
    with db.session() as s:
        st = _study(s, name)
        readers = sorted(s.scalars(select(User.name).join(ReaderStudyReader, ReaderStudyReader.user_id == User.id)
                                   .where(ReaderStudyReader.reader_study_id == st.id)))
        total = s.scalar(select(func.count()).select_from(ReaderCase).where(ReaderCase.reader_study_id == st.id)) or 0
        rows = s.execute(select(ReaderAnswer.id, ReaderCase.position, User.name, ReaderAnswer.preferred)
                         .join(ReaderCase, ReaderCase.id == ReaderAnswer.case_id)
                         .join(User, User.id == ReaderAnswer.user_id)
                         .where(ReaderCase.reader_study_id == st.id)).all()
        by_answer = {aid: (pos, reader) for aid, pos, reader, _ in rows}
        errors = [(*by_answer[e.answer_id], e.source, e.kind, e.significant) for e in s.scalars(
            select(ReaderError).where(ReaderError.answer_id.in_(list(by_answer)))).all()] if by_answer else []
        return StudyAnswers(st.name, (st.sources[0], st.sources[1]), readers, total,
                            {(pos, reader): pref for _, pos, reader, pref in rows}, errors)


def study_names(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(ReaderStudy.name).order_by(ReaderStudy.name)))


def blinded(db: Database, study_id: int, user_id: int) -> bool:
    """Whether this user reads this study in a reader study: their review page then hides its ground truth."""
    with db.session() as s:
        return s.scalar(select(ReaderCase.id).join(
            ReaderStudyReader, ReaderStudyReader.reader_study_id == ReaderCase.reader_study_id)
            .where(ReaderCase.study_id == study_id, ReaderStudyReader.user_id == user_id).limit(1)) is not None
