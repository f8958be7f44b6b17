"""Operating xrq: the one settings table behind every option, `xrq db`, `xrq health`, logging, numbers
too large and read-only databases as `Error:` lines, and Flower watching real workers."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from cli.context import settings_from, settings_options
from cli.main import cli
from testing.services import free_port, wait_for, workers
from tests.conftest import REPO, service_missing
from worker.settings import SETTINGS

REDIS = "redis://127.0.0.1:6379/0"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def _command(path: str) -> click.Command:
    command: click.Command = cli
    for name in path.split():
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.var)
def test_every_setting_is_an_option_whose_help_shows_its_variable_and_default(setting: Any) -> None:
    assert setting.commands, f"{setting.var} is an option of no command"
    for name in setting.commands:
        args = ["--help"] if name == "xrq" else [*name.split(), "--help"]
        text = " ".join(run(*args).output.split())  # help wraps lines
        if setting.secret:  # a variable only (`ps` shows options): the help names it, there is no option
            assert setting.var in text and f"--{setting.name.replace('_', '-')}" not in text, (name, setting.var)
            continue
        assert f"--{setting.name.replace('_', '-')}" in text, (name, setting.var)
        assert f"env var: {setting.var}" in text, (name, setting.var)
        if setting.shown_default is not None:
            assert f"default: {' '.join(setting.shown_default.split())}" in text, (name, setting.var)


def test_the_operations_page_lists_the_table() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    for setting in SETTINGS:
        row = next((line for line in doc.splitlines() if line.startswith(f"| {setting.var} ")), None)
        assert row is not None, setting.var
        assert f"| {setting.shown_default or '(unset)'} |" in row, (setting.var, row)


@click.command()
@settings_options("submit", expose=("model",))
@click.pass_context
def _probe(ctx: click.Context, model: str | None) -> None:
    click.echo(json.dumps({k: v for k, v in vars(settings_from(ctx, model=model)).items()}))


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {"XRQ_MAX_PIXELS": "7"}, {"max_pixels": 7}),
    (["--max-pixels", "9"], {"XRQ_MAX_PIXELS": "7"}, {"max_pixels": 9}),
    (["--batch-size", "auto"], {"XRQ_BATCH_SIZE": "16"}, {"batch_size": None}),
    ([], {"XRQ_BATCH_SIZE": "16", "XRQ_DECODE_THREADS": "3"}, {"batch_size": 16, "decode_workers": 3}),
    (["--compile"], {}, {"compile": True}),
    (["--no-compile"], {"XRQ_COMPILE": "1"}, {"compile": False}),
    (["--model", "m"], {"XRQ_MODEL": "n"}, {"model": "m"}),
])
def test_options_beat_variables_which_beat_the_table(args: list[str], env: dict[str, str],
                                                     expected: dict[str, Any]) -> None:
    result = CliRunner().invoke(_probe, args, env=env, catch_exceptions=False)
    got = json.loads(result.output)
    assert {k: got[k] for k in expected} == expected


def test_a_group_option_typed_beats_the_commands_variable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typed.db'}"
    result = run("--database-url", url, "status", "--json", env={"XRQ_DATABASE_URL": "nonsense"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "typed.db").exists()


def test_db_upgrade_and_current_and_no_automatic_migration(db_url: str) -> None:
    from alembic import command

    from db.engine import _config, create

    env = {"XRQ_DATABASE_URL": db_url, "XRQ_AUTO_MIGRATE": "0"}
    current = run("db", "current", "--json", env=env)
    assert json.loads(current.output)["state"] == "empty"
    assert run("db", "current", "--check", env=env).exit_code == 1
    refused = run("status", env=env)
    assert refused.exit_code == 1
    assert "has no xrq tables yet" in refused.output and "run `xrq db upgrade`" in refused.output

    engine = create(db_url)  # a database left at an older revision by an older xrq
    config = _config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
    engine.dispose()
    refused = run("status", env=env)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "is at schema revision 0004" in refused.output and "run `xrq db upgrade`" in refused.output

    upgraded = run("db", "upgrade", env=env)
    assert upgraded.exit_code == 0 and "upgraded from revision 0004 to" in upgraded.output
    assert "already at revision" in run("db", "upgrade", env=env).output
    assert run("db", "current", "--check", env=env).exit_code == 0
    assert run("status", env=env).exit_code == 0


def test_health_without_a_broker_checks_the_database(sqlite_url: str) -> None:
    result = run("health", "--json", env={"XRQ_DATABASE_URL": sqlite_url})
    assert result.exit_code == 1  # a new file: no schema yet, and health migrates nothing
    checks = {c["name"]: c for c in json.loads(result.output.splitlines()[0])}
    assert not checks["database"]["ok"] and "xrq db upgrade" in checks["database"]["detail"]
    assert run("db", "upgrade", env={"XRQ_DATABASE_URL": sqlite_url}).exit_code == 0
    ok = run("health", env={"XRQ_DATABASE_URL": sqlite_url})
    assert ok.exit_code == 0, ok.output
    assert "database ok" in _words(ok.output) and "broker ok none configured" in _words(ok.output)
    no_workers = run("health", "--queue", "gpu", env={"XRQ_DATABASE_URL": sqlite_url})
    assert no_workers.exit_code == 1 and no_workers.output.endswith("Error: not healthy: queue gpu (see above)\n")


def test_health_fails_fast_when_the_broker_is_down(sqlite_url: str) -> None:
    env = {"XRQ_DATABASE_URL": sqlite_url, "XRQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run("health", "--no-database", "--queue", "gpu", "--timeout", "1", env=env)
    assert result.exit_code == 1
    assert "broker FAIL" in _words(result.output)
    assert "queue gpu FAIL the broker does not answer" in _words(result.output)


@pytest.mark.parametrize(("args", "message"), [
    (["status", "3000000000"], "Error: Invalid value for '[JOB]': 3000000000 is not in the range 1<=x<=2147483647"),
    (["status", "--limit", "99999999999999999999"], "Error: Invalid value for '--limit'"),
    (["submit", "{examples}", "--model", "m", "--batch-size", "99999999999"],
     "99999999999 is more than 65536, the most this takes (or auto)"),
    (["reports", "--job", "99999999999999999999"], "Error: a number given is too large for the database"),
])
def test_numbers_too_large_for_the_database_are_errors(args: list[str], message: str, db_url: str) -> None:
    from tests.conftest import EXAMPLES

    result = run(*[a.format(examples=EXAMPLES) for a in args], env={"XRQ_DATABASE_URL": db_url})
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    assert message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_read_only_database_is_an_error_that_says_what_to_do(tmp_path: Path, tiny_model: Path,
                                                               iu_folder: Path) -> None:
    path = tmp_path / "ro.db"
    assert run("db", "upgrade", env={"XRQ_DATABASE_URL": f"sqlite:///{path}"}).exit_code == 0
    # Opened read-only (root ignores file modes, so chmod would not do on every machine).
    env = {"XRQ_DATABASE_URL": f"sqlite:///file:{path}?mode=ro&uri=true"}
    assert run("status", env=env).exit_code == 0  # reading is fine
    result = run("submit", str(iu_folder), "--model", str(tiny_model), env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: the database is read-only (attempt to write a readonly database): "
                                    "make the SQLite file and its folder writable"), result.output


@pytest.fixture
def _logging_restored() -> Iterator[None]:
    yield
    from worker.logs import unconfigure

    unconfigure()
    logging.getLogger().setLevel(logging.WARNING)


@pytest.mark.usefixtures("_logging_restored")
def test_json_logs_and_no_alembic_chatter(sqlite_url: str) -> None:
    from db.engine import open_database
    from worker.logs import configure

    stream = io.StringIO()
    configure("info", "json", stream=stream)
    open_database(sqlite_url).dispose()  # migrates: Alembic says "Context impl SQLiteImpl." at INFO
    logging.getLogger("xrq.test").info("batch %d done", 3, extra={"job_id": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("xrq.test").exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["xrq.test", "xrq.test"]
    assert lines[0]["message"] == "batch 3 done" and lines[0]["job_id"] == 7 and lines[0]["level"] == "info"
    assert "ValueError: boom" in lines[1]["exc"]


def _words(text: str) -> str:
    return " ".join(text.split())


def _redis() -> None:
    import redis

    try:
        redis.Redis(socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing("Redis", exc)


@pytest.fixture
def broker_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker of this test's own (a key prefix on the shared Redis), an SQLite file, JSON logs."""
    import redis

    _redis()
    prefix = f"xrq-test-{uuid.uuid4().hex[:8]}:"
    url = f"sqlite:///{tmp_path / 'xrq.db'}"
    assert run("db", "upgrade", env={"XRQ_DATABASE_URL": url}).exit_code == 0
    yield {"XRQ_BROKER_URL": REDIS, "XRQ_BROKER_PREFIX": prefix, "XRQ_DATABASE_URL": url, "XRQ_LOG_FORMAT": "json",
           "XRQ_AUTO_MIGRATE": "0", "XRQ_DEVICE": "cpu"}
    client = redis.Redis()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    from worker.logs import unconfigure

    unconfigure()  # XRQ_LOG_FORMAT made the in-process CLI install a handler on CliRunner's stream


@pytest.mark.redis
@pytest.mark.slow
def test_health_asks_the_workers_of_a_queue(broker_env: dict[str, str], tmp_path: Path) -> None:
    with workers(tmp_path, broker_env, 1, "--queues", "gpu") as [worker]:
        name = f"w0-{os.getpid()}@{os.uname().nodename}"
        ok = run("health", "--queue", "gpu", "--worker", name, env=broker_env)
        assert ok.exit_code == 0, ok.output
        assert f"queue gpu ok 1 worker(s) answer: {name}" in _words(ok.output)
        assert f"worker {name} ok answers, consuming gpu" in _words(ok.output)
        cpu = run("health", "--queue", "cpu", "--timeout", "1", env=broker_env)
        assert cpu.exit_code == 1 and "queue cpu FAIL none answered within 1 s" in _words(cpu.output)
        log = worker.text()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(r["message"].endswith(" ready.") for r in records), log[-2000:]
    assert not [r for r in records if r["logger"].startswith("alembic")]


def _get(url: str, auth: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return response.status, json.loads(body) if body.startswith((b"{", b"[")) else body
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.mark.redis
@pytest.mark.slow
def test_flower_sees_xrq_workers_and_tasks_behind_basic_auth(
    broker_env: dict[str, str], tmp_path: Path, tiny_model: Path, iu_folder: Path
) -> None:
    """The compose file's Flower, for real: xrq's app (its key prefix), basic auth, the API answering."""
    pytest.importorskip("flower")
    port, auth = free_port(), "ops:secret"
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "worker.app", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=REPO, env={**os.environ, **broker_env, "FLOWER_BASIC_AUTH": auth}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        with workers(tmp_path, broker_env, 1, "--queues", "gpu,cpu") as _:
            name = f"w0-{os.getpid()}@{os.uname().nodename}"
            wait_for(lambda: _ok(f"{base}/healthcheck"), timeout=60, what="Flower to listen")
            assert _get(f"{base}/api/workers")[0] == 401  # no password, no API
            wait_for(lambda: name in (_get(f"{base}/api/workers?refresh=1", auth, timeout=15)[1] or {}),
                     timeout=60, what="Flower to list the worker")
            done = run("submit", str(iu_folder), "--model", str(tiny_model), "--wait", "--json", env=broker_env)
            assert done.exit_code == 0 and json.loads(done.stdout)["counts"]["done"] == 4, done.output

            def succeeded() -> list[dict[str, Any]]:
                tasks = (_get(f"{base}/api/tasks", auth)[1] or {}).values()
                return [t for t in tasks if t["name"] == "xrq.generate_batch" and t["state"] == "SUCCESS"]

            task = wait_for(succeeded, timeout=30, what="Flower to see the task succeed")[0]
            assert task["worker"] == name
    finally:
        flower.terminate()
        try:
            flower.wait(15)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait(10)
        log.close()


def _ok(url: str) -> bool:
    try:
        return _get(url, timeout=2)[0] == 200
    except OSError:
        return False
