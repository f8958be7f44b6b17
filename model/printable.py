"""Text from files and reports made safe to show: control characters become visible escapes.

A file name or a report is data, and data can hold anything: `ESC ]0;title BEL` retitles a terminal,
a newline splits a table row, a right-to-left override reorders what a reader sees, and a control
character drawn by matplotlib is a missing glyph. Every human-readable output (terminal tables and
messages, pictures, HTML) passes such text through `printable`; machine formats (JSON, CSV, Parquet)
keep it as it is.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with every non-printable character written as an escape (`\\x1b`, `\\n`, `\\u202e`).

    Printable means what `str.isprintable` says; spaces other than U+0020 (no-break, ideographic)
    are shown as a plain space. The result is one line whenever the input holds no printable
    line break, which none is.
    """
    if text.isprintable():
        return text
    return "".join(_one(c) for c in text)


def _one(c: str) -> str:
    if c.isprintable():
        return c
    if c in _NAMED:
        return _NAMED[c]
    if unicodedata.category(c) == "Zs":
        return " "
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
