"""Clean report text at the tokenizer boundary: what a byte-level decoder can emit that no report holds.

A byte-level BPE model (GPT-2's tokenizer) generates bytes, not characters. When it stops inside a
multi-byte UTF-8 character, or strings bytes together that are no UTF-8 at all, decoding the whole
sequence turns each invalid piece into U+FFFD; a byte token for a control character decodes to that
character (a bell, an escape that retitles a terminal). Neither is report text, so both are dropped
here, once, for every caller (the pipeline, `generate`, training's validation), and whitespace is
collapsed. Torch-free, so anything may call it.
"""

from __future__ import annotations

import unicodedata

_DROP = frozenset({"Cc", "Cs", "Co", "Cn"})  # control, lone surrogate, private use, unassigned


def clean_report(text: str) -> str:
    """`text` without U+FFFD (undecodable byte pieces) or control and unassigned characters, its
    whitespace collapsed to single spaces."""
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if ch != "\ufffd" and (ch.isspace() or unicodedata.category(ch) not in _DROP))
    return " ".join(kept.split())
