"""The review application in a real browser (Debian's Chromium through Playwright): sign in, the
worklist, a study with its images, save, sign, reject, a conflict between two reviewers, and the
security cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.review_schema import ReviewVersion
from db.schema import Report
from tests.web.conftest import PASSWORD, Site, sign_in
from tests.web.screenshots import take, wait_images

pytestmark = pytest.mark.slow


@pytest.fixture
def page(browser: Any) -> Any:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def images_loaded(page: Any) -> bool:
    wait_images(page)
    return bool(page.evaluate(
        "() => Array.from(document.querySelectorAll('img.xray')).every(i => i.complete && i.naturalWidth > 0)"))


def versions(site: Site, report_id: int) -> list[tuple[int, str, str]]:
    with site.db.session() as s:  # type: ignore[attr-defined]
        return [(v.version, v.action, v.text) for v in s.scalars(
            select(ReviewVersion).where(ReviewVersion.report_id == report_id).order_by(ReviewVersion.version))]


def draft_text(site: Site, report_id: int) -> str:
    with site.db.session() as s:  # type: ignore[attr-defined]
        return str(s.get(Report, report_id).text)


def test_sign_in_worklist_study_save_and_sign(any_site: Site, page: Any, tmp_path: Path) -> None:
    site = any_site
    page.goto(site.url + "/")
    assert page.url.startswith(site.url + "/login")  # no session: the login page
    sign_in(page, site)
    assert page.get_by_role("heading", name="Worklist").is_visible()
    links = page.locator("table.worklist tbody tr td:first-child a")
    assert links.all_inner_texts() == ["rsna", "1002", "1001", "1000"]  # newest first, uid as the link text

    page.get_by_role("link", name="rsna", exact=True).click()
    assert images_loaded(page) and page.locator("img.xray").count() == 1  # the DICOM, rendered as PNG
    report = page.get_by_label("Report")
    assert report.input_value() == "Patchy opacity in the right lower lobe, concerning for pneumonia."
    assert page.get_by_role("region", name="Ground truth").count() == 0  # none for this study
    before = page.locator("img.xray").bounding_box()["width"]
    page.get_by_role("button", name="+").click()  # zoom in: wider than its frame, scrolled within it
    assert page.locator("img.xray.zoomed").count() == 1
    assert page.locator("img.xray").bounding_box()["width"] > before * 1.4

    report.fill("Patchy opacity in the right lower lobe. Pneumonia.")
    page.get_by_role("button", name="Save").click()
    assert page.get_by_role("status").inner_text() == "Saved as version 1 (not signed)."
    assert page.locator("#state").inner_text() == "draft"

    page.get_by_label("Report").fill("Right lower lobe pneumonia.")
    page.get_by_label("Report").press("Control+Enter")  # the shortcut signs
    assert page.get_by_role("status").inner_text() == "Signed as version 2."
    assert page.locator("#state").inner_text() == "signed"
    rid = site.seeded.report_ids["rsna"]
    assert versions(site, rid) == [(1, "save", "Patchy opacity in the right lower lobe. Pneumonia."),
                                   (2, "sign", "Right lower lobe pneumonia.")]
    assert draft_text(site, rid) == "Patchy opacity in the right lower lobe, concerning for pneumonia."

    page.goto(site.url + "/?state=signed")
    assert page.locator("table.worklist tbody tr td:first-child a").all_inner_texts() == ["rsna"]
    page.goto(site.url + "/?q=EFFUSION")
    assert page.locator("table.worklist tbody tr td:first-child a").all_inner_texts() == ["1001", "1000"]

    shots = take(page, site.url, site.seeded.report_ids["1000"], tmp_path / "shots")
    assert page.get_by_role("region", name="Ground truth").is_visible()  # study 1000 has ground truth
    assert all(p.stat().st_size > 20_000 and p.read_bytes()[:4] == b"\x89PNG" for p in shots)


def test_a_signed_report_takes_only_an_addendum(site: Site, page: Any) -> None:
    sign_in(page, site)
    rid = site.seeded.report_ids["1002"]
    page.goto(f"{site.url}/reports/{rid}")
    page.get_by_role("button", name="Sign", exact=True).click()
    assert page.get_by_role("button", name="Save").count() == 0
    assert page.get_by_role("button", name="Reject").count() == 0
    page.get_by_label("Report").fill("No acute cardiopulmonary abnormality. Addendum: old rib fracture.")
    page.get_by_role("button", name="Sign", exact=True).click()
    assert page.get_by_role("status").inner_text() == "Addendum signed as version 2."
    assert [a for _, a, _ in versions(site, rid)] == ["sign", "addendum"]


def test_reject_with_a_reason_then_next(site: Site, page: Any) -> None:
    sign_in(page, site)
    rid = site.seeded.report_ids["1001"]
    page.goto(f"{site.url}/reports/{rid}")
    page.keyboard.press("Alt+r")  # the shortcut puts the cursor in the reason
    page.keyboard.type("Wrong side: the effusion is on the right.")
    page.keyboard.press("Enter")
    assert page.get_by_role("status").inner_text() == "Rejected (version 1)."
    assert "Wrong side: the effusion is on the right." in page.locator("main").inner_text()
    assert versions(site, rid) == [(1, "reject", "Mild cardiomegaly. Small left pleural effusion.")]
    page.get_by_role("button", name="Next").click()  # the next unreviewed draft, older in the worklist
    assert page.url == f"{site.url}/reports/{site.seeded.report_ids['1000']}"
    page.goto(site.url + "/?state=rejected")
    assert page.locator("table.worklist tbody tr td:first-child a").all_inner_texts() == ["1001"]


def test_two_reviewers_the_second_gets_a_conflict(site: Site, browser: Any) -> None:
    first, second = browser.new_context(), browser.new_context()
    try:
        a, b = first.new_page(), second.new_page()
        sign_in(a, site, "alice")
        sign_in(b, site, "bob")
        rid = site.seeded.report_ids["1000"]
        a.goto(f"{site.url}/reports/{rid}")
        b.goto(f"{site.url}/reports/{rid}")
        a.get_by_label("Report").fill("Alice's reading.")
        a.get_by_role("button", name="Save").click()
        b.get_by_label("Report").fill("Bob's reading.")
        b.get_by_role("button", name="Sign", exact=True).click()
        assert b.get_by_role("heading", level=1).inner_text() == "Conflict: someone else changed this report"
        assert b.locator("#newer").inner_text() == "Alice's reading."
        assert b.get_by_label("Your text (not saved)").input_value() == "Bob's reading."
        assert versions(site, rid) == [(1, "save", "Alice's reading.")]  # nothing overwritten
        b.get_by_role("link", name="Open the current version").click()
        assert b.get_by_label("Report").input_value() == "Alice's reading."
    finally:
        first.close()
        second.close()


def test_typed_script_is_shown_as_text(site: Site, page: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, site)
    rid = site.seeded.report_ids["1000"]
    page.goto(f"{site.url}/reports/{rid}")
    typed = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    page.get_by_label("Report").fill(typed)
    page.get_by_role("button", name="Save").click()
    assert page.get_by_label("Report").input_value() == typed
    assert page.locator(".versions pre").first.inner_text() == typed
    with site.db.session() as s:  # type: ignore[attr-defined]
        s.get(Report, site.seeded.report_ids["1002"]).text = typed  # a model's draft with markup in it
    page.goto(site.url + "/")
    assert typed in page.locator("table.worklist").inner_text()
    assert dialogs == [] and page.locator("main script").count() == 0


def test_no_session_no_token_wrong_role(site: Site, page: Any) -> None:
    rid = site.seeded.report_ids["1000"]
    for path in ("/", f"/reports/{rid}", "/admin/users", "/images/1.png"):
        response = page.goto(site.url + path)
        assert page.url.startswith(site.url + "/login"), path
        assert response.ok
    # A form posted without its token (a forged request from another site) changes nothing.
    sign_in(page, site, "alice")
    forged = page.request.post(f"{site.url}/reports/{rid}", form={"version": "0", "action": "sign", "text": "forged"})
    assert forged.status == 403 and versions(site, rid) == []
    wrong = page.request.post(f"{site.url}/reports/{rid}", form={"version": "0", "action": "sign", "text": "forged",
                                                                   "csrf_token": "not-the-token"})
    assert wrong.status == 403 and versions(site, rid) == []
    # A reviewer on an admin page.
    response = page.goto(site.url + "/admin/users")
    assert response.status == 403 and page.get_by_role("heading", name="Not allowed").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "xrq_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert PASSWORD not in cookie["value"]
    # Signed out, the old page's forms no longer work.
    page.goto(site.url + "/")
    page.get_by_role("button", name="Sign out").click()
    assert page.url.startswith(site.url + "/login")
    page.goto(site.url + "/")
    assert page.url.startswith(site.url + "/login")


def test_an_admin_sees_the_users(site: Site, page: Any) -> None:
    sign_in(page, site, "root")
    page.goto(site.url + "/admin/users")
    assert page.get_by_role("heading", name="Users").is_visible()
    assert "alice" in page.locator("table").inner_text()


def test_a_wrong_password_many_times_locks_the_account(site: Site, page: Any) -> None:
    for _ in range(4):
        sign_in(page, site, "bob", "wrong password")
        assert page.get_by_role("alert").inner_text() == "Wrong user name or password."
    sign_in(page, site, "bob", "wrong password")
    assert "locked" in page.get_by_role("alert").inner_text()
    sign_in(page, site, "bob", PASSWORD)  # the right password, too late
    assert "locked" in page.get_by_role("alert").inner_text()
    assert page.url.startswith(site.url + "/login")
    sign_in(page, site, "alice", PASSWORD)  # others are not locked out
    assert page.get_by_role("heading", name="Worklist").is_visible()
