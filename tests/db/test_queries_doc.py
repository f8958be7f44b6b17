"""Every SQL example in docs/queries.md runs, on SQLite and PostgreSQL, against a real populated database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import IU_CSV, REPO
from worker import runtime
from worker.evaluate import import_iu, run_evaluation
from worker.settings import Settings
from worker.submit import submit_folder

DOC = REPO / "docs" / "queries.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_sql_block_of_the_doc_is_read_and_none_is_empty() -> None:
    """The reader finds each ```sql block (counted line by line, not by the same pattern), whole."""
    lines = DOC.read_text().splitlines()
    assert len(QUERIES) == lines.count("```sql") > 0
    assert [q.split()[0].upper() for q in QUERIES] == ["SELECT"] * len(QUERIES)  # reads only, each one whole


@pytest.fixture
def populated(db_url: str, tiny_model: Path, iu_folder: Path) -> str:
    settings = Settings(database_url=db_url, model=str(tiny_model))
    job = submit_folder(settings, iu_folder).job_id
    import_iu(settings, IU_CSV / "indiana_reports.csv", None, split_file=IU_CSV / "r2gen_split.csv")
    run_evaluation(settings, job_id=job, text="both", with_meteor=False)
    return db_url


def test_every_documented_query_runs(populated: str) -> None:
    db = runtime.database(populated)
    results = {}
    with db.session() as s:
        for query in QUERIES:
            results[query] = s.execute(text(query)).all()
    study = next(rows for q, rows in results.items() if "WHERE uid = '1000'" in q)
    assert [r.model for r in study] == ["tiny"] and study[0].text
    summary = next(rows for q, rows in results.items() if "FROM job_summary" in q)
    assert [tuple(r)[3:] for r in summary] == [(4, 4, 0, 0, 0)]
    scored = next(rows for q, rows in results.items() if "FROM report_scores" in q)
    assert len(scored) == 4 and all(r.rouge_l is not None for r in scored)
    views = next(rows for q, rows in results.items() if "HAVING" in q)
    assert [tuple(r) for r in views] == [("1000", 3), ("54", 2), ("7", 2)]


def test_the_views_query_counts_a_study_submitted_twice_once(populated: str, tiny_model: Path, iu_folder: Path,
                                                              tmp_path: Path) -> None:
    import shutil

    again = tmp_path / "again"
    shutil.copytree(iu_folder, again)  # the same studies and one more: a second job, with its own image rows
    shutil.copy(iu_folder / "CXR25_IM-1024-2001.png", again / "CXR26_IM-0000-0001.png")
    assert submit_folder(Settings(database_url=populated, model=str(tiny_model)), again).created
    views = next(q for q in QUERIES if "HAVING" in q)
    with runtime.database(populated).session() as s:
        assert [tuple(r) for r in s.execute(text(views)).all()] == [("1000", 3), ("54", 2), ("7", 2)]
