"""`xrq serve --workers 2` on PostgreSQL: one secret for every process, sessions valid in each, and
nothing secret in its log; a sign-off calls `on_signed` once, a save never."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from db.review import Submitted
from testing.services import REPO, free_port, port_open, wait_for
from tests.web.conftest import PASSWORD, make_site


@pytest.mark.postgres
@pytest.mark.slow
def test_several_processes_share_sessions_and_log_no_secret(postgres_url: str, tmp_path: Path) -> None:
    import httpx

    make_site(postgres_url, tmp_path)
    port = free_port()
    secret = "a-secret-key-for-this-test-" + "s" * 30
    log = tmp_path / "serve.log"
    env = {**os.environ, "XRQ_DATABASE_URL": postgres_url, "XRQ_SECRET_KEY": secret, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-c", "from cli.main import main; main()", "serve", "--port",
                                   str(port), "--workers", "2"], cwd=REPO, env=env, stdout=out, stderr=out,
                                  start_new_session=True)
        try:
            wait_for(lambda: port_open(port), timeout=60, what="xrq serve to listen")
            wait_for(lambda: log.read_text().count("Application startup complete") >= 2, timeout=60,
                     what="both server processes")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as client:
                token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
                assert token is not None
                signed = client.post("/login", data={"user": "alice", "password": PASSWORD, "next": "/",
                                                     "csrf_token": token.group(1)})
                assert signed.status_code == 200 and "Worklist" in signed.text
                for _ in range(30):  # keep-alive off: new connections spread over both processes
                    page = client.get("/", headers={"connection": "close"})
                    assert page.status_code == 200 and "Worklist" in page.text
                cookie = client.cookies["xrq_session"]
        finally:
            server.terminate()
            server.wait(30)
    text = log.read_text()
    assert "GET / HTTP/1.1" in text  # the access log is on, and says nothing secret
    for secret_thing in (PASSWORD, cookie, token.group(1), secret):
        assert secret_thing not in text


def test_on_signed_is_called_for_each_sign_off(sqlite_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from db.accounts import by_name
    from worker import review as service

    _, db, seeded = make_site(sqlite_url, tmp_path)
    called: list[Submitted] = []
    monkeypatch.setattr(service, "on_signed", lambda db, signed: called.append(signed))
    alice = by_name(db, "alice")
    assert alice is not None
    rid = seeded.report_ids["1000"]
    service.submit(db, rid, base_version=0, action="save", text="edited", author_id=alice.id)
    assert called == []
    service.submit(db, rid, base_version=1, action="sign", text="signed", author_id=alice.id)
    service.submit(db, rid, base_version=2, action="sign", text="signed, amended", author_id=alice.id)
    assert [(s.action, s.text, s.author, s.uid) for s in called] == [
        ("sign", "signed", "alice", "1000"), ("addendum", "signed, amended", "alice", "1000")]
    assert called[0].draft == "The heart is normal in size. The lungs are clear. No pleural effusion."
