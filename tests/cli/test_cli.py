"""The `xrq` command as a user meets it: exit codes, exact error text, JSON output, every --help."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from testing.badfiles import make_bad_files
from tests.conftest import EXAMPLES


def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += commands(command, (*prefix, name))
    return found


@pytest.mark.parametrize("path", commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0
    command = cli
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    if not isinstance(command, click.Group):
        assert "Example" in result.output, path


def test_submit_status_reports_round_trip(db_url: str, tiny_model: Path, iu_folder: Path, tmp_path: Path) -> None:
    expected = make_bad_files(iu_folder, EXAMPLES / "CXR7_IM-2263-1001.png", tmp_path / "outside.png")
    env = {"XRQ_DATABASE_URL": db_url, "XRQ_MODEL": str(tiny_model)}

    first = run("submit", str(iu_folder), "--json", env=env)
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["created"] is True and data["finished"] is True
    assert data["counts"] == {"pending": 0, "queued": 0, "running": 0, "done": 4, "failed": len(expected),
                              "skipped": 0}
    assert sorted(f["uid"] for f in data["failures"]) == sorted(expected)
    assert set(data["timings"]) == {"decode_s", "model_s", "db_s", "studies"}

    second = run("submit", str(iu_folder), env=env)
    assert second.exit_code == 0
    assert second.output.startswith(f"Already submitted as job {data['job_id']}: nothing new to do.")

    status = json.loads(run("status", str(data["job_id"]), "--json", env=env).output)
    assert status["counts"] == data["counts"] and status["job_id"] == data["job_id"]
    listing = json.loads(run("status", "--json", env=env).output)
    assert [j["job_id"] for j in listing] == [data["job_id"]]

    out = tmp_path / "reports.jsonl"
    result = run("reports", "--job", str(data["job_id"]), "--format", "jsonl", "-o", str(out), env=env)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["uid"] for r in rows) == ["1000", "25", "54", "7"]
    assert {len(r["images"]) for r in rows} == {1, 2, 3}
    assert all(r["settings"]["num_beams"] == 1 for r in rows)

    csv_text = run("reports", "--format", "csv", env=env).output
    assert csv_text.splitlines()[0] == ("study_id,uid,job_id,model,created_at,images,confidence,report,"
                                        "review_state,final_text,signed_by,signed_at")
    table = run("status", env=env).output
    assert str(iu_folder) in table


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["submit", "/no/such/folder", "--model", "m"], {}, "Error: Invalid value for 'FOLDER': Directory "
                                                             "'/no/such/folder' does not exist."),
        (["submit", "{examples}"], {}, "Error: no model given: pass --model DIR or set XRQ_MODEL "
                                       "(make one with `xrq model init --out models/tiny`)"),
        (["submit", "{examples}", "--model", "{tmp}/nomodel"], {}, "Error: "),
        (["submit", "{examples}", "--model", "{tmp}/empty"], {}, "Error: "),
        (["status"], {"XRQ_DATABASE_URL": "nonsense"}, "Error: XRQ_DATABASE_URL is 'nonsense': no scheme; it must "
                                                       "start with one of sqlite://, postgresql://, postgres://"),
        (["status", "7"], {}, "Error: no job 7; `xrq status` lists the jobs"),
        (["submit", "{examples}", "--model", "m", "--batch-size", "0"], {}, "Error: Invalid value for "
                                                                            "'--batch-size'"),
        (["submit", "{examples}", "--model", "{tiny}", "--max-new-tokens", "300"], {},
         "Error: this model's decoder writes at most 255 tokens, not 300: lower XRQ_MAX_NEW_TOKENS"),
    ],
)
def test_user_errors_say_what_to_do_without_a_traceback(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    args = [a.format(examples=EXAMPLES, tmp=tmp_path, tiny=tiny_model) for a in args]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(message), result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_model_without_weights_names_what_is_missing(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").unlink()
    result = CliRunner().invoke(cli, ["submit", str(EXAMPLES), "--model", str(broken)],
                                env={"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "model.safetensors" in result.output
    assert "Traceback" not in result.output


def test_model_init_writes_a_loadable_directory(tmp_path: Path) -> None:
    result = run("model", "init", "--out", str(tmp_path / "m"), "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["preset"] == "tiny" and (tmp_path / "m" / "model.safetensors").is_file()
    again = CliRunner().invoke(cli, ["model", "init", "--out", str(tmp_path / "m")])
    assert again.exit_code == 1 and again.output.startswith("Error: ")


def test_a_file_that_is_not_a_database_and_a_newer_schema_are_named_errors(tmp_path: Path) -> None:
    import sqlite3

    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    result = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{junk}", "status"])
    assert result.exit_code == 1
    assert result.output == (f"Error: cannot open the database sqlite:///{junk}: file is not a database. "
                             "Check XRQ_DATABASE_URL and that the server runs.\n")
    newer = tmp_path / "newer.db"
    assert CliRunner().invoke(cli, ["--database-url", f"sqlite:///{newer}", "status"]).exit_code == 0
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    from worker import runtime

    runtime.clear()  # a new `xrq` process: nothing cached from the first command
    result = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{newer}", "status"])
    assert result.exit_code == 1 and "Was it made by a newer xrq? Upgrade xrq" in result.output
    assert "Traceback" not in result.output
