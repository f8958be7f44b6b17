"""The picture of `xrq evaluate --truth signed`: per group (model or job), how often drafts were signed
unchanged, how many words were changed, the scores against the signed text, and why drafts were rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.printable import printable


def plot_signed(groups: list[dict[str, Any]], out: str | Path) -> Path:
    """A 2×2 PNG from the groups' summaries (worker.evaluate_signed.SignedGroup.summary)."""
    from matplotlib.figure import Figure

    from model.figures.plots import save_figure

    fig = Figure(figsize=(13, 9), dpi=110)
    axes = fig.subplots(2, 2)
    names = [printable(f"{g['group']} {g['ref']}") for g in groups]
    accepted = axes[0, 0]
    values = [g["accepted_unchanged"] or 0.0 for g in groups]
    bars = accepted.barh(names, values, color="#3fb950")
    for bar, g in zip(bars, groups, strict=True):
        accepted.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                      f" {g['accepted_unchanged'] or 0:.0%} of {g['signed']} signed ({g['rejected']} rejected)",
                      va="center", fontsize=8)
    accepted.set_xlim(0, 1.4)
    accepted.set_title("Signed unchanged (accepted_unchanged)")
    hist = axes[0, 1]
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        bins = g["word_edit_distance"]["histogram"]
        hist.bar([k + i * width for k in range(len(bins))], list(bins.values()), width=width, label=names[i])
        if i == 0:
            hist.set_xticks([k + 0.4 - width / 2 for k in range(len(bins))], list(bins))
    hist.set_title("Words changed per signed report")
    hist.set_xlabel("word edit distance, draft to signed")
    hist.legend(fontsize=7)
    scores = axes[1, 0]
    keys = (("bleu_4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"))
    for i, g in enumerate(groups):
        s = g["scores_vs_signed"] or {}
        scores.bar([k + i * width for k in range(len(keys))], [s.get(k) or 0.0 for k, _ in keys], width=width,
                   label=names[i])
    scores.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], [n for _, n in keys])
    scores.set_title("Drafts scored against the signed text")
    scores.legend(fontsize=7)
    reasons = axes[1, 1]
    counted: dict[str, int] = {}
    for g in groups:
        if g["group"] == "model":
            for r in g["rejection_reasons"]:
                counted[r["reason"]] = counted.get(r["reason"], 0) + r["count"]
    top = sorted(counted.items(), key=lambda kv: -kv[1])[:8]
    if top:
        reasons.barh([printable(r)[:50] for r, _ in top][::-1], [n for _, n in top][::-1], color="#f85149")
    else:
        reasons.text(0.5, 0.5, "no rejections", ha="center", va="center")
    reasons.set_title("Rejection reasons")
    fig.suptitle("xrq evaluation against signed reports", fontsize=14, parse_math=False)
    return save_figure(fig, out)
