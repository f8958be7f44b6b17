"""`xrq status`'s activity: every count walks a time window, so its cost is the window's work, not the
history's (failures by reason used to group every failure ever recorded)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from bench.scale_data import fill
from db.engine import open_database
from db.queries import activity
from db.schema import JobStudy, utcnow


def test_failures_by_reason_cover_the_last_day_only(db_url: str) -> None:
    db = open_database(db_url)
    try:
        fill(db, 2_000, job_size=1_000)
        now = utcnow()
        with db.session() as s:
            failed = list(s.scalars(select(JobStudy.study_id).where(JobStudy.status == "failed")
                                    .order_by(JobStudy.study_id)))
            recent = failed[: len(failed) // 3]
            s.execute(update(JobStudy).where(JobStudy.status == "failed").values(updated_at=now - timedelta(days=30)))
            s.execute(update(JobStudy).where(JobStudy.study_id.in_(recent), JobStudy.status == "failed")
                      .values(updated_at=now - timedelta(hours=3)))
        assert len(failed) > 20 and recent
        act = activity(db, now - timedelta(hours=1), top=100)
        assert act.failures == 0  # none in the last hour
        assert sum(n for _, n in act.by_reason) == len(recent)  # the last day's, not all
        assert act.reasons_since is not None and now - act.reasons_since >= timedelta(days=1) - timedelta(seconds=5)
        wide = activity(db, now - timedelta(days=60), top=100)  # a window wider than a day groups it all
        with db.session() as s:
            every = s.scalar(select(func.count()).select_from(JobStudy).where(JobStudy.status == "failed"))
        assert sum(n for _, n in wide.by_reason) == every == wide.failures
    finally:
        db.dispose()
