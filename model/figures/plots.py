"""Figures of an evaluation: the corpus scores, their spread over studies, the clinical labels.

Every figure of model/figures is a bare `matplotlib.figure.Figure`, drawn by Agg into a file: pyplot is
never imported, so no backend is chosen and no figure is kept in a global registry (a worker or a web
server importing this module changes nothing in its process).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from model.metrics.evaluation import EvaluationResult
from model.printable import printable

# The bounded metrics share one axis (0-1); CIDEr is unbounded (up to 10 per study), so it gets its
# own axis beside them: on the shared one it squashed every other bar.
BOUNDED = (("bleu_1", "BLEU-1"), ("bleu_2", "BLEU-2"), ("bleu_3", "BLEU-3"), ("bleu_4", "BLEU-4"),
           ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"))
CORPUS = (*BOUNDED, ("cider", "CIDEr"))
SPREAD = (("bleu_1", "BLEU-1"), ("bleu_4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"))
BLUE, CIDER, GREEN, GREY = "#3b6ea8", "#a85c3b", "#6aa84f", "#888888"


def plot_evaluation(result: EvaluationResult, out: str | Path, *, title: str = "") -> Path:
    """Write a 2×2 PNG: corpus scores, per-study distributions, clinical F1 per observation, a summary."""
    fig = Figure(figsize=(13, 9), dpi=110)
    grid = fig.add_gridspec(2, 2)
    corpus = grid[0, 0].subgridspec(1, 2, width_ratios=[6, 1.4], wspace=0.35)
    _corpus(fig.add_subplot(corpus[0, 0]), fig.add_subplot(corpus[0, 1]), result)
    _spread(fig.add_subplot(grid[0, 1]), result)
    _clinical(fig.add_subplot(grid[1, 0]), result)
    _summary(fig.add_subplot(grid[1, 1]), result)
    fig.suptitle(printable(title) or "xrq evaluation", fontsize=14, parse_math=False)
    return save_figure(fig, out)


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Lay the figure out and write it as PNG (a bare Figure: nothing to free afterwards).

    The folder must exist: a figure creates no folders (a mistyped `-o /nonexistent/x.png` once
    made `/nonexistent`); the caller makes the one folder the user asked for.
    """
    out = Path(out)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def _bars(ax: Axes, items: tuple[tuple[str, str], ...], corpus: dict[str, float | None], color: str) -> float:
    """Bars of `items` labelled with their value ("n/a" when missing); returns the tallest value."""
    values = [corpus.get(key) or 0.0 for key, _ in items]
    bars = ax.bar([label for _, label in items], values, color=color)
    for bar, (key, _), value in zip(bars, items, values, strict=True):
        text = "n/a" if corpus.get(key) is None else f"{value:.3f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=9)
    return max(values, default=0.0)


def _corpus(ax: Axes, ax_cider: Axes, result: EvaluationResult) -> None:
    corpus = result.scores.corpus
    _bars(ax, BOUNDED, corpus, BLUE)
    ax.set_ylim(0, 1.08)  # headroom for the value over a bar near 1
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title("Corpus scores (pycocoevalcap)")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    top = _bars(ax_cider, (("cider", "CIDEr"),), corpus, CIDER)
    ax_cider.set_ylim(0, max(1.0, top * 1.2))
    ax_cider.set_title("CIDEr, own scale", fontsize=9)
    ax_cider.tick_params(axis="x", rotation=30)
    ax_cider.grid(axis="y", alpha=0.3)


def _spread(ax: Axes, result: EvaluationResult) -> None:
    per = result.scores.per_study.values()
    series = [[s[key] for s in per if key in s] for key, _ in SPREAD]
    labels = [label for (key, label), values in zip(SPREAD, series, strict=True) if values]
    ax.boxplot([values for values in series if values], tick_labels=labels, showmeans=True,
               meanprops={"marker": "^", "markerfacecolor": GREEN, "markeredgecolor": GREEN},
               medianprops={"color": "#e69138"}, flierprops={"marker": "o", "markersize": 3, "alpha": 0.5})
    ax.set_ylim(-0.02, 1.28)  # room above 1 for the legend, clear of every box and outlier
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(f"Per-study scores (n = {result.scores.n_studies})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[
        Line2D([], [], marker="^", linestyle="", color=GREEN, label="mean"),
        Line2D([], [], color="#e69138", label="median"),
        Patch(facecolor="white", edgecolor="black", label="middle half of studies"),
        Line2D([], [], marker="o", linestyle="", color="black", markersize=3, label="outlier (1.5×IQR rule)"),
    ], loc="upper center", ncols=2, fontsize=8, frameon=False)


def _clinical(ax: Axes, result: EvaluationResult) -> None:
    """F1 per observation; one that no reference is positive for has no F1 (n/a, out of the macro mean)."""
    per = result.labels.per_observation
    names = list(per)
    scored = [per[n].f1 if per[n].support else 0.0 for n in names]
    ax.barh(names, scored, color=[GREEN if per[n].support else GREY for n in names])
    for i, name in enumerate(names):
        p = per[name]
        text, colour = (f"{p.f1:.2f} (n={p.support})", "black") if p.support else ("n/a (no positive study)", GREY)
        ax.annotate(text, (scored[i], i), va="center", fontsize=8, color=colour, xytext=(3, 0),
                    textcoords="offset points")
    ax.set_xlim(0, 1.2)
    ax.invert_yaxis()
    observed = sum(1 for p in per.values() if p.support)
    ax.set_title(f"Clinical findings F1 per observation (rule-based labeller)\n"
                 f"macro F1 {result.labels.macro.f1:.3f} over the {observed} observed", fontsize=11)


def _summary(ax: Axes, result: EvaluationResult) -> None:
    s = result.scores
    lines = [
        f"studies scored: {s.n_studies}",
        f"distinct reports: {s.distinct_reports} ({s.distinct_ratio:.1%})",
        f"clinical F1 micro: {result.labels.micro.f1:.3f}   macro: {result.labels.macro.f1:.3f}",
    ]
    if result.normal is not None:
        n = result.normal
        lines.append(f"normal vs abnormal (MeSH): accuracy {n.accuracy:.3f}, kappa {n.kappa:.3f}")
    if s.meteor_error:
        lines.append(printable(s.meteor_error))
    lines.append(f"NLTK BLEU-4: {s.corpus.get('nltk_bleu_4') or 0:.3f}")
    cider = sorted(v["cider"] for v in s.per_study.values() if "cider" in v)
    if cider:
        lines.append(f"CIDEr per study: median {cider[len(cider) // 2]:.3f}, max {cider[-1]:.3f}")
    ax.axis("off")
    ax.text(0.02, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=10, transform=ax.transAxes,
            wrap=True, parse_math=False)
    ax.set_title("Summary")
