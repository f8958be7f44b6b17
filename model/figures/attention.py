"""Attention maps drawn over the images: a row per sentence, a column per view (`model.inference.attention`).

Each view is drawn as decoded; the map (one value per patch of the model's input, which is the whole
image resized, so the patch grid spans the whole picture) is stretched over it, translucent, with
the view's share of the sentence's attention in its title. `render_attention` writes a PNG to a
path or any binary file object (the review application serves the bytes).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from matplotlib.figure import Figure
from PIL import Image

from model.printable import printable

if TYPE_CHECKING:  # figures/ sits beside inference/, not above it: the maps arrive as an argument
    from model.inference.attention import StudyAttention

CMAP = "inferno"
ALPHA = 0.5


DPI = 90
MIN_WIDTH_IN = 4.8  # inches: a sentence's 45-character title over a single view fits
CHAR_PX = 7.0  # about the width of a 9-point character at DPI, with room to spare


def render_attention(out: str | Path | BinaryIO, images: Sequence[Image.Image], attention: StudyAttention, *,
                     title: str = "", report: str | None = None) -> str | Path | BinaryIO:
    """Write the PNG (rows: sentences; columns: the views the model saw); `report` is printed above."""
    shown = list(images)[:attention.views]
    rows = max(1, len(attention.sentences))
    cols = max(1, len(shown))
    top = printable(title) or "Where the model looked"
    width = max(MIN_WIDTH_IN, 3.4 * cols + 0.4)  # one view's column alone is too narrow for its titles
    chars = int(width * DPI / CHAR_PX)  # what a line of 9-point text holds across the figure
    head = "\n".join(textwrap.fill(line, chars) for line in [
        top, f"{attention.averaged}; each map sums to one over its view", *([printable(report)] if report else [])])
    head_height = 0.2 * (head.count("\n") + 1) + 0.2
    weight = "attention" if attention.method == "attention" else "weight"
    fig = Figure(figsize=(width, 3.4 * rows + head_height), dpi=DPI)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[head_height, *[3.4] * rows])
    ax_head = fig.add_subplot(grid[0, :])
    ax_head.axis("off")
    ax_head.text(0.0, 1.0, head, va="top", ha="left", fontsize=9, transform=ax_head.transAxes, parse_math=False)
    for r, sentence in enumerate(attention.sentences):
        for c, image in enumerate(shown):
            ax = fig.add_subplot(grid[r + 1, c])
            ax.axis("off")
            grey = image.convert("L")
            ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
            heat = sentence.maps[c]
            ax.imshow(heat, cmap=CMAP, alpha=ALPHA, extent=(0, grey.width, grey.height, 0), interpolation="bilinear",
                      vmin=0, vmax=float(heat.max()) or 1.0)
            label = textwrap.shorten(printable(sentence.text), 45, placeholder="…")
            ax.set_title(f"{label}\nview {c + 1}: {sentence.view_share[c]:.0%} of the {weight}", fontsize=8,
                         parse_math=False)
    if not attention.sentences:
        ax = fig.add_subplot(grid[1, 0])
        ax.axis("off")
        ax.text(0.5, 0.5, "no sentence to show", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
