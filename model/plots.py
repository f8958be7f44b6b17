"""Figures of an evaluation: the corpus scores, their spread over studies, the clinical labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; set before pyplot is imported
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from model.evaluation import EvaluationResult

CORPUS = (("bleu_1", "BLEU-1"), ("bleu_2", "BLEU-2"), ("bleu_3", "BLEU-3"), ("bleu_4", "BLEU-4"),
          ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"))
# CIDEr is unbounded (up to 10 per study), so it gets its own line in the summary, not a box here.
SPREAD = (("bleu_1", "BLEU-1"), ("bleu_4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"))


def plot_evaluation(result: EvaluationResult, out: str | Path, *, title: str = "") -> Path:
    """Write a 2×2 PNG: corpus scores, per-study distributions, clinical F1 per observation, a summary."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), dpi=110)
    _corpus(axes[0][0], result)
    _spread(axes[0][1], result)
    _clinical(axes[1][0], result)
    _summary(axes[1][1], result)
    fig.suptitle(title or "xrq evaluation", fontsize=14)
    return save_figure(fig, out)


def save_figure(fig: Figure, out: str | Path) -> Path:
    """Lay the figure out, write it as PNG (making the folder), and free it: pyplot keeps figures alive."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _corpus(ax: plt.Axes, result: EvaluationResult) -> None:
    corpus = result.scores.corpus
    names = [label for key, label in CORPUS]
    values = [corpus.get(key) or 0.0 for key, _ in CORPUS]
    bars = ax.bar(names, values, color="#3b6ea8")
    for bar, (key, _), value in zip(bars, CORPUS, values, strict=True):
        text = "n/a" if corpus.get(key) is None else f"{value:.3f}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(1.0, max(values) * 1.15))
    ax.set_title("Corpus scores (pycocoevalcap)")
    ax.tick_params(axis="x", rotation=30)


def _spread(ax: plt.Axes, result: EvaluationResult) -> None:
    per = result.scores.per_study.values()
    series = [[s[key] for s in per if key in s] for key, _ in SPREAD]
    labels = [label for (key, label), values in zip(SPREAD, series, strict=True) if values]
    ax.boxplot([values for values in series if values], tick_labels=labels, showmeans=True)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Per-study scores (n = {result.scores.n_studies})")
    ax.grid(axis="y", alpha=0.3)


def _clinical(ax: plt.Axes, result: EvaluationResult) -> None:
    per = result.labels.per_observation
    names = list(per)
    ax.barh(names, [per[n].f1 for n in names], color="#6aa84f")
    for i, name in enumerate(names):
        ax.annotate(f"{per[name].f1:.2f} (n={per[name].support})", (per[name].f1, i), va="center", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    ax.set_xlim(0, 1.15)
    ax.invert_yaxis()
    ax.set_title("Clinical findings F1 per observation (rule-based labeller)")


def _summary(ax: plt.Axes, result: EvaluationResult) -> None:
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
        lines.append(f"METEOR unavailable: {s.meteor_error}")
    lines.append(f"NLTK BLEU-4: {s.corpus.get('nltk_bleu_4') or 0:.3f}")
    cider = sorted(v["cider"] for v in s.per_study.values() if "cider" in v)
    if cider:
        lines.append(f"CIDEr per study: median {cider[len(cider) // 2]:.3f}, max {cider[-1]:.3f}")
    ax.axis("off")
    ax.text(0.02, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=10, transform=ax.transAxes)
    ax.set_title("Summary")
