"""CSV that a spreadsheet opens safely, and that a terminal shows without obeying its escape sequences.

File names and DICOM UIDs reach `xrq reports` and `xrq export` CSV unchanged, and anyone can name a file
`=HYPERLINK(...)`: a spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (or a tab or carriage
return before one) as a formula. Such a cell is written with a single quote in front, as OWASP's "CSV
Injection" page says, which spreadsheets show as text; every other cell is written as stored.

On a terminal, CSV cells have their control characters escaped as the table does (`printable`), so a
name cannot retitle the terminal or split a row; to a pipe or a file, the bytes are written as they are
(never through `click.echo`, which strips escape sequences and would change a uid from what the database
holds). cli/listing.py writes `xrq reports` and `xrq export` CSV with `CsvWriter`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

from model.printable import printable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: characters a spreadsheet reads a formula after


def csv_cell(value: Any) -> Any:
    """`value` as a CSV cell a spreadsheet shows as text: a string that starts like a formula gets `'` in front."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class CsvWriter:
    """`csv.writer` whose cells pass through `csv_cell`, and through `printable` when `terminal`."""

    def __init__(self, stream: IO[str], *, terminal: bool = False) -> None:
        self._writer = csv.writer(stream)
        self.terminal = terminal

    def writerow(self, row: Iterable[Any]) -> None:
        cells = [csv_cell(v) for v in row]
        if self.terminal:
            cells = [printable(c) if isinstance(c, str) else c for c in cells]
        self._writer.writerow(cells)


def is_terminal(stream: IO[str]) -> bool:
    """Whether `stream` is a terminal (standard output on one), where CSV cells are escaped."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False
