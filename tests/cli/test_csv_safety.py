"""CSV from `xrq reports` and `xrq export`: formula-like cells neutralised (OWASP), control characters
escaped on a terminal, and the bytes as stored in a pipe or a file (click.echo used to strip escapes).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.safecsv import CsvWriter, csv_cell
from testing.services import distinct_copies
from tests.conftest import EXAMPLES

# File names become study uids: a formula for each character OWASP lists, and escape sequences.
NAMES = ["=HYPERLINK(1)\x1b[31mred", "+1+2", "-3+4", "@SUM(5)", "\t=6", "\r=7", "plain\x1b]0;title\x07"]


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@A1", "\t=1", "\r=1"])
def test_a_formula_like_cell_is_quoted(value: str) -> None:
    assert csv_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["1000", "a=b", " =1", "", 3, -3, None, 2.5])
def test_other_cells_are_as_stored(value: object) -> None:
    assert csv_cell(value) == value


def test_the_writer_escapes_control_characters_only_for_a_terminal() -> None:
    for terminal, expected in ((False, "'=1\x1b[31m,x\r\n"), (True, "'=1\\x1b[31m,x\r\n")):
        buf = io.StringIO()
        CsvWriter(buf, terminal=terminal).writerow(["=1\x1b[31m", "x"])
        assert buf.getvalue() == expected


@pytest.fixture
def reported(tmp_path: Path, tiny_model: Path) -> str:
    folder = tmp_path / "images"
    for path, name in zip(distinct_copies([EXAMPLES / "CXR25_IM-1024-2001.png"], folder, len(NAMES)), NAMES,
                          strict=True):
        path.rename(folder / f"{name}.png")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    done = CliRunner().invoke(cli, ["--database-url", url, "submit", str(folder), "--model", str(tiny_model),
                                    "--max-new-tokens", "2", "--group-by", "image"])
    assert done.exit_code == 0, done.output
    return url


def _uids(data: bytes, column: str = "uid") -> list[str]:
    return sorted(row[column] for row in csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def expected_uids() -> list[str]:
    return sorted(f"'{n}.png" if n[0] in "=+-@\t\r" else f"{n}.png" for n in NAMES)


def test_reports_csv_to_a_pipe_is_byte_exact_and_neutralised(reported: str) -> None:
    result = CliRunner().invoke(cli, ["--database-url", reported, "reports", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert b"\x1b[31m" in result.stdout_bytes and b"\x1b]0;title\x07" in result.stdout_bytes
    assert _uids(result.stdout_bytes) == expected_uids()


def test_reports_csv_to_a_file_is_byte_exact_and_neutralised(reported: str, tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(cli, ["--database-url", reported, "reports", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert _uids(out.read_bytes()) == expected_uids()


def test_reports_csv_to_a_terminal_escapes_control_characters(
    reported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.safecsv.is_terminal", lambda stream: True)
    result = CliRunner().invoke(cli, ["--database-url", reported, "reports", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert b"\x1b" not in result.stdout_bytes and b"\x07" not in result.stdout_bytes
    assert "'=HYPERLINK(1)\\x1b[31mred.png" in result.stdout_bytes.decode()
    assert "'\\t=6.png" in result.stdout_bytes.decode()  # a row per line: no raw tab, no raw carriage return


def test_export_csv_is_neutralised_and_byte_exact(reported: str, tmp_path: Path) -> None:
    out = tmp_path / "e.csv"
    result = CliRunner().invoke(cli, ["--database-url", reported, "export", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert _uids(out.read_bytes()) == expected_uids()
    assert b"\x1b[31m" in out.read_bytes()
    rows = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
    assert all(not row[c].startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for c in row)
