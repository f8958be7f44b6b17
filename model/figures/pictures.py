"""A study as a radiologist wants to see it: the images side by side, the draft report beside the truth.

Every text drawn (title, report, truth, reasons) is data: control characters are shown as escapes
(`model.printable`) and `$` is never read as mathtext, so a report or a file name draws as written.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from model.figures.plots import save_figure  # a bare Figure, no pyplot (see model/figures/plots.py)
from model.printable import printable

MAX_IMAGES = 4
WRAP = 95  # characters per line of report text


def render_study(
    out: str | Path, *, title: str, images: Sequence[Image.Image | str], report: str | None,
    truth: str | None = None, scores: Mapping[str, float | None] | None = None, note: str | None = None,
) -> Path:
    """Write a PNG: up to four views in a row, then the generated report, the ground truth, the scores.

    `images` are decoded pictures, or a reason string for a view that could not be read (drawn as a
    labelled grey panel, so a failed study still gets a picture saying why). `out`'s folder must exist.
    """
    shown = list(images)[:MAX_IMAGES] or ["no images"]
    text = _text_block(report, truth, scores, note)
    text_lines = text.count("\n") + 1
    fig = Figure(figsize=(4.2 * max(2, len(shown)), 4.4 + 0.2 * text_lines), dpi=100)
    grid = fig.add_gridspec(2, len(shown), height_ratios=[4.2, 0.2 * text_lines + 0.3])
    for column, image in enumerate(shown):
        ax = fig.add_subplot(grid[0, column])
        ax.axis("off")
        if isinstance(image, str):
            ax.set_facecolor("#dddddd")
            ax.text(0.5, 0.5, textwrap.fill(printable(image), 30), ha="center", va="center", fontsize=9,
                    transform=ax.transAxes, parse_math=False)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.imshow(image.convert("L"), cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"view {column + 1}: {image.width}×{image.height}", fontsize=9)
    ax_text = fig.add_subplot(grid[1, :])
    ax_text.axis("off")
    ax_text.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=9.5, transform=ax_text.transAxes,
                 parse_math=False)
    fig.suptitle(printable(title), fontsize=12, x=0.01, ha="left", parse_math=False)
    return save_figure(fig, out)


def _text_block(report: str | None, truth: str | None, scores: Mapping[str, float | None] | None,
                note: str | None) -> str:
    parts = ["DRAFT REPORT (generated; not a diagnosis)", _wrap(report or "(no report)")]
    if truth:
        parts += ["", "GROUND TRUTH", _wrap(truth)]
    if scores:
        shown = "  ".join(f"{k.upper().replace('_', '-')} {v:.3f}" for k, v in scores.items() if v is not None)
        parts += ["", f"SCORES  {shown}"]
    if note:
        parts += ["", _wrap(note)]
    return "\n".join(parts)


def _wrap(text: str) -> str:
    """One paragraph of at most WRAP characters a line: whitespace runs become one space, the rest escaped."""
    return "\n".join(textwrap.wrap(printable(" ".join(text.split())), WRAP)) or "(empty)"
