"""Which deployment a database is: its id (made at creation, migration 0010), and messages of others seen.

Every task message names the deployment it belongs to. A worker whose database has another id leaves the
message for its owner and records it here, so that `xrq health` can say that two deployments share a broker.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from db.bulk import insert_ignore
from db.engine import Database
from db.schema import Meta, utcnow

DEPLOYMENT_KEY = "deployment_id"
FOREIGN_KEY = "foreign_message"


@dataclass(frozen=True)
class ForeignMessage:
    """The last message of another deployment that a worker of this database took and left."""

    deployment: str
    task: str
    worker: str
    at: datetime
    count: int  # how many since the first, as far as this database knows (concurrent workers may miss one)


def deployment_id(db: Database) -> str:
    """This database's deployment id; made now if it has none (a database stamped past 0010 by hand)."""
    with db.session() as s:
        found = s.get(Meta, DEPLOYMENT_KEY)
        if found is not None:
            return found.value
        insert_ignore(s, Meta, [{"key": DEPLOYMENT_KEY, "value": uuid.uuid4().hex}], ["key"])
    with db.session() as s:
        made = s.get(Meta, DEPLOYMENT_KEY)
        assert made is not None
        return made.value


def record_foreign(db: Database, *, deployment: str, task: str, worker: str) -> None:
    """Note that a worker of this database took (and left) a message of `deployment`."""
    with db.session() as s:
        row = s.get(Meta, FOREIGN_KEY, with_for_update=True)
        count = int(_load(row.value).get("count", 0)) + 1 if row is not None else 1
        value = json.dumps({"deployment": deployment, "task": task, "worker": worker,
                            "at": utcnow().isoformat(), "count": count})
        if row is None:
            insert_ignore(s, Meta, [{"key": FOREIGN_KEY, "value": value}], ["key"])
        else:
            row.value = value


def last_foreign(db: Database) -> ForeignMessage | None:
    with db.session() as s:
        value = s.scalar(select(Meta.value).where(Meta.key == FOREIGN_KEY))
    data = _load(value) if value else {}
    try:
        return ForeignMessage(str(data["deployment"]), str(data["task"]), str(data["worker"]),
                              datetime.fromisoformat(data["at"]), int(data["count"]))
    except (KeyError, TypeError, ValueError):
        return None


def _load(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
