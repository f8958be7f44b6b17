"""Ground truth in the database: import (idempotent), and the reference texts evaluations need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from db.bulk import chunks, insert_ignore
from db.engine import Database
from db.errors import NotFoundError
from db.schema import Truth, TruthImage

TEXT_FIELDS = ("findings", "impression", "mesh", "indication", "comparison")


@dataclass(frozen=True)
class TruthIn:
    uid: str
    findings: str = ""
    impression: str = ""
    mesh: str = ""
    indication: str = ""
    comparison: str = ""
    split: str | None = None
    images: Sequence[tuple[str, str]] = field(default_factory=tuple)  # (filename, projection)


@dataclass(frozen=True)
class ImportCounts:
    added: int
    changed: int
    unchanged: int
    images_added: int

    def as_dict(self) -> dict[str, int]:
        return {"added": self.added, "changed": self.changed, "unchanged": self.unchanged,
                "images_added": self.images_added}


def import_truth(db: Database, collection: str, rows: Sequence[TruthIn]) -> ImportCounts:
    """Insert new studies, update changed ones, leave identical ones alone: importing twice changes nothing."""
    with db.session() as s:
        existing = {t.uid: t for t in s.scalars(select(Truth).where(Truth.collection == collection))}
        new = [r for r in rows if r.uid not in existing]
        changed = [r for r in rows if r.uid in existing and _differs(existing[r.uid], r)]
        insert_ignore(s, Truth, [{"collection": collection, "uid": r.uid, "split": r.split,
                                   **{f: getattr(r, f) for f in TEXT_FIELDS}} for r in new],
                       ["collection", "uid"])
        if changed:  # one executemany by primary key, not a statement per row
            s.execute(update(Truth), [{"id": existing[r.uid].id, "split": r.split,
                                       **{f: getattr(r, f) for f in TEXT_FIELDS}} for r in changed])
        before = s.scalar(select(func.count()).select_from(TruthImage).where(TruthImage.collection == collection))
        insert_ignore(s, TruthImage, [{"collection": collection, "uid": r.uid, "filename": name,
                                        "projection": projection} for r in rows for name, projection in r.images],
                       ["collection", "filename"])
        after = s.scalar(select(func.count()).select_from(TruthImage).where(TruthImage.collection == collection))
        return ImportCounts(len(new), len(changed), len(rows) - len(new) - len(changed), (after or 0) - (before or 0))


def _differs(row: Truth, new: TruthIn) -> bool:
    return row.split != new.split or any(getattr(row, f) != getattr(new, f) for f in TEXT_FIELDS)


def collections(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(Truth.collection).distinct().order_by(Truth.collection)))


def default_collection(db: Database, collection: str | None) -> str:
    """The collection asked for, or the only one there is; a clear error otherwise."""
    names = collections(db)
    if collection is not None:
        if collection not in names:
            raise NotFoundError(f"no ground truth for collection {collection!r}; imported: {names or 'none'}. "
                                "Import it with `xrq truth import`.")
        return collection
    if not names:
        raise NotFoundError("no ground truth imported yet: run `xrq truth import REPORTS_CSV PROJECTIONS_CSV`")
    if len(names) > 1:
        raise NotFoundError(f"several collections have ground truth ({', '.join(names)}): pick one with --collection")
    return names[0]


def truth_rows(db: Database, collection: str, *, split: str | None = None,
               uids: Sequence[str] | None = None) -> dict[str, Truth]:
    """Ground-truth rows by uid, optionally only of one split and/or of the given uids."""
    with db.session() as s:
        stmt = select(Truth).where(Truth.collection == collection)
        if split is not None:
            stmt = stmt.where(Truth.split == split)
        if uids is None:
            return {t.uid: t for t in s.scalars(stmt)}
        found: dict[str, Truth] = {}
        for chunk in chunks(list(uids)):
            found.update((t.uid, t) for t in s.scalars(stmt.where(Truth.uid.in_(chunk))))
        return found
