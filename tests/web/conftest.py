"""Fixtures of the web tests: a seeded database, the application in-process, and a live server for the
browser (uvicorn in a thread, on a free port)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from testing.services import free_port, wait_for
from tests.web.seed import Seeded, seed

PASSWORD = "correct horse battery"


@dataclass
class Site:
    url: str
    db: object
    seeded: Seeded
    app: object


def make_site(url: str, tmp_path: Path, **config: object) -> tuple[object, object, Seeded]:
    from web.app import WebConfig, create_app
    from web.auth import Throttle, add_user
    from worker import runtime

    db = runtime.database(url)
    seeded = seed(db, tmp_path / "images")
    add_user(db, "alice", PASSWORD, "reviewer")
    add_user(db, "bob", PASSWORD, "reviewer")
    add_user(db, "root", PASSWORD, "admin")
    throttle = Throttle(delay=0.01, max_delay=0.05, max_failures=5, lock_for=timedelta(minutes=15))
    app = create_app(WebConfig(database_url=url, secret_key="test-secret-" + "x" * 32, throttle=throttle,
                               **config), db)  # type: ignore[arg-type]
    return app, db, seeded


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    """The application served by uvicorn on a free port, on SQLite."""
    yield from serve(sqlite_url, tmp_path)


@pytest.fixture
def any_site(db_url: str, tmp_path: Path) -> Iterator[Site]:
    """The same on SQLite and on PostgreSQL."""
    yield from serve(db_url, tmp_path)


def serve(url: str, tmp_path: Path) -> Iterator[Site]:
    import uvicorn

    app, db, seeded = make_site(url, tmp_path)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="the test server to start")
    try:
        yield Site(f"http://127.0.0.1:{port}", db, seeded, app)
    finally:
        server.should_exit = True
        thread.join(10)


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import service_missing

    if not CHROMIUM.exists():
        service_missing("Chromium (/usr/bin/chromium)", FileNotFoundError(str(CHROMIUM)))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def sign_in(page: object, site: Site, name: str = "alice", password: str = PASSWORD) -> None:
    page.goto(site.url + "/login")  # type: ignore[attr-defined]
    page.get_by_label("User").fill(name)  # type: ignore[attr-defined]
    page.get_by_label("Password").fill(password)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
