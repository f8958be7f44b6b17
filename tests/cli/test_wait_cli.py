"""`xrq submit --wait` when nothing consumes the queue, and `--strict` for cron (issue 19)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from tests.conftest import EXAMPLES


def test_wait_with_no_worker_says_so_and_stops_after_the_timeout(broker_env: dict[str, str], tiny_model: Path,
                                                                 iu_folder: Path) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["submit", str(iu_folder), "--model", str(tiny_model), "--wait",
                                      "--timeout", "6"], env=broker_env, catch_exceptions=False)
    took = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert "no worker answers (none within 1 s): start one with `xrq worker`" in result.output
    assert "job 1: 0 pending, 4 queued, 0 running; no progress for" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: job 1 still has 4 studies to do after 6 s; it goes on"), result.output
    assert took < 60  # the note came within seconds, the wait ended at the timeout


def test_strict_exits_1_when_a_study_failed(sqlite_url: str, tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    env = {"XRQ_DATABASE_URL": sqlite_url}
    args = ["submit", str(folder), "--model", str(tiny_model), "--max-new-tokens", "3"]
    lenient = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert lenient.exit_code == 0, lenient.output
    strict = CliRunner().invoke(cli, [*args, "--strict", "--json"], env=env, catch_exceptions=False)
    assert strict.exit_code == 1
    assert json.loads(strict.output.splitlines()[0])["counts"]["failed"] == 1  # the summary is still printed
    assert strict.output.strip().splitlines()[-1] == (
        "Error: --strict: 1 of job 1's 2 studies failed (`xrq status 1` lists why)")
