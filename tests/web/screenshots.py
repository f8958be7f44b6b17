"""Screenshots of the worklist and the study page, as the README shows them.

The browser tests call `take` (into a temporary folder, and check the pictures); to refresh the
README's pictures run `python -m tests.web.screenshots` (writes docs/images/).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def wait_images(page: Any) -> None:
    """Until every X-ray on the page has loaded (polled from here: the pages' CSP forbids eval, which
    Playwright's wait_for_function needs)."""
    from testing.services import wait_for

    wait_for(lambda: page.evaluate("() => Array.from(document.querySelectorAll('img.xray')).every(i => i.complete)"),
             timeout=30, what="the images to load")


def take(page: Any, base_url: str, report_id: int, out: Path) -> list[Path]:
    """Worklist and study page of a signed-in `page`, at a reading-room size, into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(base_url + "/")
    worklist = out / "worklist.png"
    page.screenshot(path=str(worklist), full_page=False)
    page.goto(f"{base_url}/reports/{report_id}")
    wait_images(page)
    study = out / "study.png"
    page.screenshot(path=str(study), full_page=False)
    return [worklist, study]


def _reviewed(site: Any) -> None:
    """A signed and a rejected draft, so the worklist shows every state."""
    from db import review
    from db.accounts import by_name

    bob = by_name(site.db, "bob")
    ids = site.seeded.report_ids
    review.submit(site.db, ids["1002"], base_version=0, action="sign", author_id=bob.id,
                  text="No acute cardiopulmonary abnormality.")
    review.submit(site.db, ids["1001"], base_version=0, action="reject", text="", author_id=bob.id,
                  reason="Wrong side: the effusion is on the right")


def main() -> None:
    from playwright.sync_api import sync_playwright

    from tests.web.conftest import CHROMIUM, serve, sign_in

    with tempfile.TemporaryDirectory() as tmp:
        site_gen = serve(f"sqlite:///{tmp}/xrq.db", Path(tmp))
        site = next(site_gen)
        _reviewed(site)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
                page = browser.new_page()
                sign_in(page, site)
                for path in take(page, site.url, site.seeded.report_ids["1000"], REPO / "docs" / "images"):
                    print(f"Wrote {path}")
                browser.close()
        finally:
            site_gen.close()


if __name__ == "__main__":
    main()
