"""Output a user can trust: `-o` paths checked before any work, and names printed as they are, safely.

A file name or report is data: control characters in it are shown as escapes in every
human-readable output, so it can neither retitle the terminal nor split a table row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from model.printable import printable
from tests.conftest import EXAMPLES, IU_CSV

EVIL = "a\x1b]0;pwned\x07b.png"  # ESC ] 0 ; title BEL: sets an xterm's title
NEWLINE = "line\nbreak.png"
RED = "bad\x1b[31mred.png"


def invoke(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert "Traceback" not in result.output and not isinstance(result.exception, (OSError, ValueError))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def job(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """One job: two studies whose file names hold control characters, and a failed file named so too."""
    root = tmp_path_factory.mktemp("safety")
    images = root / "images"
    images.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", images / EVIL)
    shutil.copy(EXAMPLES / "CXR303_IM-1404-1001.png", images / NEWLINE)
    (images / RED).write_text("not an image\n")
    env = {"XRQ_DATABASE_URL": f"sqlite:///{root / 'x.db'}", "XRQ_MODEL": str(tiny_model)}
    code, output = invoke(env, "submit", str(images))
    assert code == 0, output
    return env, output


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("plain text, ünïcödé, 1×2") == "plain text, ünïcödé, 1×2"
    assert printable(EVIL) == "a\\x1b]0;pwned\\x07b.png"
    assert printable("a\nb\tc\r\x00\x7f\x85\u202e\u2028\U000e0001") == \
        "a\\nb\\tc\\r\\x00\\x7f\\x85\\u202e\\u2028\\U000e0001"
    assert printable("no\u00a0break") == "no break"


def test_submit_reports_and_status_escape_control_characters(job: tuple[dict[str, str], str]) -> None:
    env, submitted = job
    assert "\x1b" not in submitted and "bad\\x1b[31mred.png: not an image" in submitted
    for args in (("reports",), ("reports", "--status", "failed"), ("status",), ("status", "1")):
        code, output = invoke(env, *args)
        assert code == 0, output
        assert "\x1b" not in output and "\x07" not in output, args
    _, table = invoke(env, "reports")
    lines = table.splitlines()
    assert len(lines) == 3  # the header and one line per report: the newline in a name splits nothing
    assert {line.split()[1] for line in lines[1:]} == {"a\\x1b]0;pwned…", "line\\nbreak.p…"}
    _, failed = invoke(env, "reports", "--status", "failed")
    assert "FAILED: bad\\x1b[31mred.png: not an image" in failed
    # Machine formats keep the data as it is.
    _, jsonl = invoke(env, "reports", "--format", "jsonl")
    assert "\\u001b]0;pwned\\u0007b.png" in jsonl


@pytest.mark.parametrize("command", [["reports"], ["export", "1"], ["reports", "--format", "jsonl"]])
def test_a_file_in_a_missing_folder_is_refused_before_any_work(
    job: tuple[dict[str, str], str], tmp_path: Path, command: list[str],
) -> None:
    env, _ = job
    code, output = invoke(env, *command, "-o", str(tmp_path / "missing" / "r.txt"))
    assert code == 2
    assert output.splitlines()[-1] == (f"Error: Invalid value for '-o' / '--output': {tmp_path}/missing/r.txt: "
                                       f"the folder {tmp_path}/missing does not exist; create it first")
    assert not (tmp_path / "missing").exists()
    code, output = invoke(env, *command, "-o", str(tmp_path))
    assert code == 2 and output.splitlines()[-1].endswith(f"{tmp_path} is a folder; name a file")
    (tmp_path / "file").write_text("")
    code, output = invoke(env, *command, "-o", str(tmp_path / "file" / "r.txt"))
    assert code == 2 and "does not exist" in output


def test_show_writes_a_png_only_where_asked(job: tuple[dict[str, str], str], tmp_path: Path) -> None:
    env, _ = job
    code, output = invoke(env, "show", EVIL, "-o", str(tmp_path / "s.txt"))
    assert code == 2 and output.splitlines()[-1] == (f"Error: Invalid value for '-o' / '--output': {tmp_path}/s.txt: "
                                                     "name a .png file (the format follows the name)")
    # `show 1000 -o /nonexistent/s.png` made /nonexistent: now nothing is created but what was named.
    code, output = invoke(env, "show", EVIL, "-o", str(tmp_path / "nonexistent" / "s.png"))
    assert code == 2 and "does not exist; create it first" in output
    code, output = invoke(env, "show", "--job", "1", "-o", str(tmp_path / "nonexistent" / "pictures"))
    assert code == 2 and "does not exist; create it first" in output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").write_text("")
    code, output = invoke(env, "show", "--job", "1", "-o", str(tmp_path / "taken"))
    assert code == 2 and output.splitlines()[-1].endswith("taken is a file; name a folder")
    code, output = invoke(env, "show", EVIL, "-o", str(tmp_path / "s.png"))
    assert (code, output) == (0, f"Wrote {tmp_path}/s.png\n")
    code, output = invoke(env, "show", "--job", "1", "-o", str(tmp_path / "pictures"))
    assert (code, output) == (0, f"Wrote {tmp_path}/pictures/index.html\n")


def test_a_figure_creates_no_folders(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from model.figures.plots import save_figure

    with pytest.raises(FileNotFoundError):
        save_figure(Figure(), tmp_path / "nonexistent" / "f.png")
    assert not (tmp_path / "nonexistent").exists()


def test_evaluate_checks_its_folder_before_scoring(tmp_path: Path) -> None:
    env = {"XRQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    code, output = invoke(env, "truth", "import", str(IU_CSV / "indiana_reports.csv"))
    assert code == 0, output
    (tmp_path / "a-file").write_text("")  # missing folders are made (issue 19); a file in the way is refused
    code, output = invoke(env, "evaluate", "--baseline", "most-frequent", "--no-meteor", "--json", "-o",
                          str(tmp_path / "a-file" / "missing" / "eval"))
    assert code == 2 and output.splitlines()[-1].endswith(f"{tmp_path}/a-file is a file, not a folder")
    # Nothing was scored or stored: the next run is evaluation 1.
    code, output = invoke(env, "evaluate", "--baseline", "most-frequent", "--no-meteor", "-o", str(tmp_path / "e"))
    assert code == 0 and output.startswith("Evaluation 1: ")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["evaluation.json", "evaluation.png"]
