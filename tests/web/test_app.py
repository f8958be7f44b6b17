"""The application in-process (Starlette's test client): cookies, headers, pages of the worklist, the
version rules, and `xrq user`. The browser tests (test_browser.py) cover what only a browser shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from cli.main import cli
from db import review
from db.review_schema import ReviewConflictError, ReviewRefusedError
from tests.web.conftest import PASSWORD, make_site


def token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def signed_in(app: Any, name: str = "alice", *, base: str = "http://testserver") -> TestClient:
    client = TestClient(app, base_url=base)
    form = {"user": name, "password": PASSWORD, "csrf_token": token(client.get("/login").text), "next": "/"}
    assert client.post("/login", data=form, follow_redirects=False).status_code == 303
    return client


def test_cookie_is_signed_httponly_samesite_and_secure_under_https(sqlite_url: str, tmp_path: Path) -> None:
    app, _, _ = make_site(sqlite_url, tmp_path, https=True)
    client = TestClient(app, base_url="https://testserver")
    login = client.get("/login")
    cookie = login.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "secure" in cookie.lower()
    assert "default-src 'self'" in login.headers["content-security-policy"]
    assert login.headers["x-frame-options"] == "DENY" and login.headers["cache-control"] == "no-store"
    tampered = TestClient(app, base_url="https://testserver", cookies={"xrq_session": cookie.split(";")[0][12:] + "x"})
    assert tampered.get("/", follow_redirects=False).status_code == 303  # a forged cookie is no session


def test_login_never_redirects_elsewhere(sqlite_url: str, tmp_path: Path) -> None:
    app, _, _ = make_site(sqlite_url, tmp_path)
    client = TestClient(app)
    form = {"user": "alice", "password": PASSWORD, "csrf_token": token(client.get("/login").text),
            "next": "//evil.example/"}
    assert client.post("/login", data=form, follow_redirects=False).headers["location"] == "/"


def test_worklist_pages_by_keyset(sqlite_url: str, tmp_path: Path) -> None:
    app, _, seeded = make_site(sqlite_url, tmp_path, page_size=3)
    client = signed_in(app)
    first = client.get("/").text
    uids = re.findall(r'<a href="/reports/\d+">([^<]+)</a>', first)
    assert uids == ["rsna", "1002", "1001"]
    older = re.search(r'href="/\?([^"]+)" rel="next"', first)
    assert older is not None
    second = client.get("/?" + older.group(1).replace("&amp;", "&")).text
    assert re.findall(r'<a href="/reports/\d+">([^<]+)</a>', second) == ["1000"]
    assert 'rel="next"' not in second
    assert re.findall(r'<a href="/reports/\d+">([^<]+)</a>', client.get(f"/?job={seeded.job_id}&model=demo").text)
    assert "No reports match." in client.get("/?model=other").text


def test_next_says_when_no_draft_is_left(sqlite_url: str, tmp_path: Path) -> None:
    app, db, seeded = make_site(sqlite_url, tmp_path)
    from db.accounts import by_name

    alice = by_name(db, "alice")
    assert alice is not None
    for rid in seeded.report_ids.values():
        review.submit(db, rid, base_version=0, action="save", text="seen", author_id=alice.id)
    page = signed_in(app).get(f"/reports/{seeded.report_ids['1000']}/next")
    assert "Every draft has been reviewed" in page.text and page.url.path == "/"


def test_a_disabled_user_is_signed_out(sqlite_url: str, tmp_path: Path) -> None:
    app, db, _ = make_site(sqlite_url, tmp_path)
    client = signed_in(app)
    assert client.get("/", follow_redirects=False).status_code == 200
    from db.accounts import set_disabled

    set_disabled(db, "alice", True)
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_versions_are_added_never_overwritten(db_url: str, tmp_path: Path) -> None:
    _, db, seeded = make_site(db_url, tmp_path)
    from db.accounts import by_name

    alice, bob = by_name(db, "alice"), by_name(db, "bob")
    assert alice is not None and bob is not None
    rid = seeded.report_ids["1000"]
    review.submit(db, rid, base_version=0, action="save", text="first", author_id=alice.id)
    with pytest.raises(ReviewConflictError) as conflict:
        review.submit(db, rid, base_version=0, action="sign", text="bob's", author_id=bob.id)
    assert conflict.value.current_version == 1
    with pytest.raises(ReviewRefusedError, match="reason"):
        review.submit(db, rid, base_version=1, action="reject", text="", author_id=bob.id)
    review.submit(db, rid, base_version=1, action="sign", text="signed", author_id=bob.id)
    with pytest.raises(ReviewRefusedError, match="addendum"):
        review.submit(db, rid, base_version=2, action="save", text="over it", author_id=alice.id)
    done = review.submit(db, rid, base_version=2, action="sign", text="signed + addendum", author_id=alice.id)
    assert done.action == "addendum"
    page = review.report_review(db, rid)
    assert [(v.version, v.action, v.author) for v in page.versions] == [
        (0, "draft", "demo"), (1, "save", "alice"), (2, "sign", "bob"), (3, "addendum", "alice")]
    assert page.versions[0].text == "The heart is normal in size. The lungs are clear. No pleural effusion."
    assert (page.state, page.signed_by, page.current_text) == ("signed", "alice", "signed + addendum")
    with db.session() as s:
        from sqlalchemy import text

        row = s.execute(text("SELECT review_state, final_text, signed_by, draft_text FROM reviewed_reports "
                             "WHERE report_id = :r"), {"r": rid}).one()
    assert tuple(row) == ("signed", "signed + addendum", "alice",
                          "The heart is normal in size. The lungs are clear. No pleural effusion.")


def test_user_commands(sqlite_url: str) -> None:
    runner = CliRunner()
    base = ["--database-url", sqlite_url]
    added = runner.invoke(cli, [*base, "user", "add", "carol", "--role", "admin", "--password-stdin"],
                          input="a long password\n")
    assert added.exit_code == 0, added.output
    assert added.output == "Added carol (admin)\n"
    again = runner.invoke(cli, [*base, "user", "add", "carol", "--password-stdin"], input="a long password\n")
    assert again.exit_code == 1 and "Error: there is already a user 'carol'" in again.output
    short = runner.invoke(cli, [*base, "user", "add", "dave", "--password-stdin"], input="short\n")
    assert short.exit_code == 1 and "at least 8 characters" in short.output
    assert runner.invoke(cli, [*base, "user", "disable", "carol"]).output == "Disabled carol\n"
    listed = runner.invoke(cli, [*base, "user", "list"]).output
    assert listed.startswith("carol") and "disabled" in listed and "a long password" not in listed
    missing = runner.invoke(cli, [*base, "user", "disable", "nobody"])
    assert missing.exit_code == 1 and "no user 'nobody'" in missing.output
    serve = runner.invoke(cli, [*base, "serve", "--workers", "2"])
    assert serve.exit_code == 1 and "need PostgreSQL" in serve.output


def test_a_report_page_shows_the_models_confidence_and_sections(sqlite_url: str, tmp_path: Path) -> None:
    from sqlalchemy import update

    from db.schema import Report

    app, db, seeded = make_site(sqlite_url, tmp_path)
    rid = seeded.report_ids["1000"]
    client = signed_in(app)
    assert 'aria-label="Explanation"' not in client.get(f"/reports/{rid}").text  # stored without a confidence
    with db.session() as s:
        s.execute(update(Report).where(Report.id == rid).values(
            confidence=0.4216, token_logprobs=[-0.5, -1.2, -0.9], findings="Heart normal.",
            impression="No <acute> disease."))
    page = client.get(f"/reports/{rid}").text
    assert 'aria-label="Explanation"' in page and "Confidence 0.42" in page and "3 tokens" in page
    assert "Heart normal." in page and "No &lt;acute&gt; disease." in page


def test_a_report_page_shows_where_the_model_looked(sqlite_url: str, tmp_path: Path, tiny_model: Path,
                                                    iu_folder: Path) -> None:
    """The attention picture of `xrq show --attention`, drawn on demand by the server with the report's own
    model (loaded once per process) and loaded lazily by the page; a draft without stored tokens has none."""
    import io
    import time

    from PIL import Image
    from sqlalchemy import select, update

    from db.schema import Report
    from web.app import WebConfig, create_app
    from web.auth import add_user
    from worker import runtime
    from worker.settings import Settings
    from worker.submit import submit_folder

    settings = Settings(database_url=sqlite_url, model=str(tiny_model), max_new_tokens=6)
    assert submit_folder(settings, iu_folder).summary.counts == {"done": 4}
    db = runtime.database(sqlite_url)
    add_user(db, "alice", PASSWORD, "reviewer")
    app = create_app(WebConfig(database_url=sqlite_url, secret_key="test-secret-" + "x" * 32), db)
    client = signed_in(app)
    with db.session() as s:
        first, second = s.scalars(select(Report.id).order_by(Report.id).limit(2))
    page = client.get(f"/reports/{first}").text
    assert f'<img src="/reports/{first}/attention.png" loading="lazy"' in page
    drawn = client.get(f"/reports/{first}/attention.png")
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(drawn.content)) as picture:
        assert picture.width > 400 and picture.height > 200
    start = time.perf_counter()
    assert client.get(f"/reports/{first}/attention.png").content == drawn.content  # kept: not drawn again
    assert time.perf_counter() - start < 0.5
    for method in ("relevance", "occlusion"):  # linked; their pictures name their method in their heads
        assert f'href="/reports/{first}/attention.png?method={method}"' in page
        other = client.get(f"/reports/{first}/attention.png?method={method}")
        assert other.status_code == 200 and other.content != drawn.content
    assert client.get(f"/reports/{first}/attention.png?method=saliency").status_code == 400
    with db.session() as s:
        s.execute(update(Report).where(Report.id == second).values(token_ids=None))
    assert "attention.png" not in client.get(f"/reports/{second}").text
    gone = client.get(f"/reports/{second}/attention.png")
    assert gone.status_code == 404 and "stored before xrq kept the tokens" in gone.text
    assert client.get("/reports/99999/attention.png").status_code == 404
    assert TestClient(app).get(f"/reports/{first}/attention.png", follow_redirects=False).status_code == 303
