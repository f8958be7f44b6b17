"""The calibration panels of evaluation.png: how report quality follows the model's confidence.

Left, the reliability picture: studies in equal-count bins by confidence, each bin's mean BLEU-4 and
mean clinical F1 at its mean confidence, with the diagonal where quality would equal confidence.
Right, every study as a point (confidence, BLEU-4), with Spearman's rho for both scores.
"""

from __future__ import annotations

from matplotlib.axes import Axes

from model.metrics.calibration import Calibration

BLUE, GREEN, GREY = "#3b6ea8", "#6aa84f", "#888888"


def _rho(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def draw_reliability(ax: Axes, calibration: Calibration) -> None:
    bins = calibration.bins
    x = [b.confidence for b in bins]
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1, label="quality = confidence")
    ax.plot(x, [b.clinical_f1 for b in bins], marker="o", color=GREEN, label="clinical F1 (mean of bin)")
    ax.plot(x, [b.bleu_4 for b in bins], marker="s", color=BLUE, label="BLEU-4 (mean of bin)")
    for b in bins:
        ax.annotate(f"n={b.n}", (b.confidence, b.clinical_f1), fontsize=7, xytext=(3, 4), textcoords="offset points")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence (exp mean token log-probability)")
    ax.set_ylabel("per-study score")
    ax.set_title(f"Reliability: quality by confidence ({len(bins)} equal-count bins, n = {calibration.n})",
                 fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", frameon=False)


def draw_scatter(ax: Axes, calibration: Calibration) -> None:
    conf = [p[0] for p in calibration.points]
    ax.scatter(conf, [p[1] for p in calibration.points], s=10, alpha=0.6, color=BLUE, label="BLEU-4")
    ax.scatter(conf, [p[2] for p in calibration.points], s=10, alpha=0.4, color=GREEN, marker="^",
               label="clinical F1")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("confidence")
    ax.set_title(f"Per study: Spearman rho, BLEU-4 {_rho(calibration.spearman_bleu_4)}, "
                 f"clinical F1 {_rho(calibration.spearman_clinical_f1)}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
