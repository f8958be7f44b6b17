"""Reader studies: the statistics against worked examples, and a study made, read in a browser, and
summarised by `xrq study results`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli
from db import readers
from db.accounts import by_name
from model.metrics.readers import cohen_kappa, fleiss_kappa, wilson
from tests.web.conftest import Site, sign_in
from tests.web.seed import DRAFTS, seed

OTHER = {uid: f"Second model: {text.lower()}" for uid, text in DRAFTS.items()}


def test_wilson_interval() -> None:
    low, high = wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson(0, 0) == (0.0, 0.0)


def test_cohen_kappa_worked_example() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15 -> kappa 0.4 (Wikipedia's example).
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "x"], ["x", "x"]) == 1.0


def test_fleiss_kappa_worked_example() -> None:
    # Fleiss (1971) as Wikipedia works it: 10 items, 14 raters, 5 categories -> kappa 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [Counter({str(k): v for k, v in enumerate(row) if v}) for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.210, abs=0.0005)


def two_jobs(site: Site, tmp_path: Path) -> int:
    """A second model's job over the same studies; returns its id."""
    return seed(site.db, tmp_path / "images2", model="zeta", drafts=OTHER).job_id  # type: ignore[arg-type]


@pytest.mark.slow
def test_reader_study_in_the_browser(site: Site, browser: Any, tmp_path: Path) -> None:
    second = two_jobs(site, tmp_path)
    runner = CliRunner()
    base = ["--database-url", str(site.db.url)]  # type: ignore[attr-defined]
    made = runner.invoke(cli, [*base, "study", "create", "pilot", "--job", str(site.seeded.job_id), "--job",
                               str(second), "--reader", "alice", "--reader", "bob", "--studies", "3"])
    assert made.exit_code == 0, made.output
    assert made.output.startswith("Reader study pilot: 3 cases, 2 readers")
    again = runner.invoke(cli, [*base, "study", "create", "pilot", "--job", "1", "--job", str(second),
                                "--reader", "alice"])
    assert again.exit_code == 1 and "already a reader study 'pilot'" in again.output

    picks: dict[str, list[str]] = {}
    for reader, choice in (("alice", "Report 1"), ("bob", "Report 1")):
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, site, reader)
        page.goto(site.url + "/reader")
        page.get_by_role("link", name="Continue pilot").click()
        picks[reader] = []
        for n in range(1, 4):
            assert page.get_by_role("heading", level=1).inner_text() == f"pilot: case {n} of 3"
            left = page.get_by_role("region", name="Report 1").locator("pre").inner_text()
            right = page.get_by_role("region", name="Report 2").locator("pre").inner_text()
            assert {left.startswith("Second model"), right.startswith("Second model")} == {True, False}
            text = page.locator("main").inner_text()
            assert "demo" not in text and "zeta" not in text and "Ground truth" not in text  # blinded
            picks[reader].append(left)
            if n == 1:
                page.get_by_label("Report 2: missed finding").select_option("significant")
                page.get_by_label("Report 1: wrong location").select_option("minor")
            page.get_by_role("radio", name=choice, exact=True).check()
            page.get_by_role("button", name="Submit").click()
        assert page.get_by_role("status").inner_text() == "You have answered every case of pilot. Thank you."
        context.close()
    assert picks["alice"] == picks["bob"]  # the same sides for every reader

    result = runner.invoke(cli, [*base, "study", "results", "pilot", "--json"])
    data = json.loads(result.output)
    first = sum(1 for t in picks["alice"] if not t.startswith("Second model"))  # left was the first job's
    a = data["sources"][0]
    assert data["preference"][a]["count"] == 2 * first and data["preference"][a]["of"] == 6
    assert data["preference"]["equivalent"]["count"] == 0
    assert data["agreement"] == {"readers": 2, "cases_rated_by_all": 3, "statistic": "cohen", "kappa": 1.0}
    marked = sum(e["by_kind"]["missed finding"]["significant"] for e in data["errors"].values())
    assert marked == 2
    people = runner.invoke(cli, [*base, "study", "results", "pilot"]).output
    assert "preferred (95% CI, Wilson)" in people and "Cohen's kappa 1.000 over 3 cases" in people
    # The same for an admin in the browser; not for a reader.
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, site, "root")
    page.goto(site.url + "/admin/studies")
    page.get_by_role("link", name="pilot").click()
    assert "Cohen's kappa 1.000 over 3 cases" in page.locator("main").inner_text()
    context.close()


def test_only_its_readers_see_a_study(site: Site) -> None:
    db = site.db
    readers.create(db, readers.StudyPlan("solo", (f"job:{site.seeded.job_id}", "truth:iu"), ("alice",), 5))  # type: ignore[arg-type]
    bob = by_name(db, "bob")  # type: ignore[arg-type]
    assert bob is not None
    with pytest.raises(readers.ReaderStudyError, match="not a reader"):
        readers.case(db, "solo", 1, bob.id)  # type: ignore[arg-type]
    alice = by_name(db, "alice")  # type: ignore[arg-type]
    assert alice is not None
    view = readers.case(db, "solo", 1, alice.id)  # type: ignore[arg-type]
    assert view.cases == 1 and {view.left, view.right} == {
        DRAFTS["1000"], "The cardiomediastinal silhouette is normal. The lungs are clear.\n\nNo acute disease."}
    # The study's own review page hides its ground truth from its readers, not from others.
    from tests.web.test_app import signed_in

    rid = site.seeded.report_ids["1000"]
    assert "No acute disease." not in signed_in(site.app, "alice").get(f"/reports/{rid}").text
    assert "No acute disease." in signed_in(site.app, "bob").get(f"/reports/{rid}").text


def test_a_reader_does_not_see_their_studies_drafts_outside_the_reader_study(sqlite_url: str, tmp_path: Path) -> None:
    """The worklist, the report page, its form and "Next" would name the model of each side of a case (and
    show the ground truth): for a reader of the study they leave those studies out; others see them all."""
    import re

    from sqlalchemy import select

    from db.review import report_review
    from db.review_schema import ReaderCase
    from db.schema import Report, Study
    from tests.web.conftest import make_site
    from tests.web.test_app import signed_in, token

    app, db, seeded = make_site(sqlite_url, tmp_path)
    second = seed(db, tmp_path / "images2", model="zeta", drafts=OTHER).job_id  # type: ignore[arg-type]
    readers.create(db, readers.StudyPlan("pilot", (f"job:{seeded.job_id}", f"job:{second}"), ("alice",), 2))
    with db.session() as s:  # type: ignore[attr-defined]
        read = set(s.scalars(select(Study.uid).join(ReaderCase, ReaderCase.study_id == Study.id)))
    assert len(read) == 2

    def listed(client: Any) -> set[str]:
        return set(re.findall(r'<a href="/reports/\d+">([^<]+)</a>', client.get("/").text))

    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    assert listed(bob) == set(seeded.report_ids)  # type: ignore[attr-defined]
    assert listed(alice) == set(seeded.report_ids) - read  # type: ignore[attr-defined]
    hidden = next(rid for uid, rid in seeded.report_ids.items() if uid in read)  # type: ignore[attr-defined]
    page = alice.get(f"/reports/{hidden}")
    assert page.status_code == 403 and "Hidden from you during a reader study" in page.text
    assert "demo" not in page.text and DRAFTS[next(iter(read))] not in page.text
    assert bob.get(f"/reports/{hidden}").status_code == 200
    form = {"csrf_token": token(bob.get(f"/reports/{hidden}").text), "version": "0", "action": "sign",
            "text": "Signed by a reader."}
    assert alice.post(f"/reports/{hidden}", data=form, follow_redirects=False).status_code == 403
    assert report_review(db, hidden).version == 0  # type: ignore[arg-type]  # nothing was written
    landed, where = [], "/next"
    for _ in range(8):  # "Next" from the top, and on from each draft it gives (it starts again at the end)
        where = alice.get(where, follow_redirects=False).headers["location"]
        if not where.startswith("/reports/"):
            break  # none left
        landed.append(where)
        where += "/next"
    with db.session() as s:  # type: ignore[attr-defined]
        uids = {f"/reports/{rid}": uid for rid, uid in s.execute(
            select(Report.id, Study.uid).join(Study, Study.id == Report.study_id))}
    assert len(set(landed)) == 4 and not {uids[w] for w in landed} & read  # both models' drafts of the 2 others
