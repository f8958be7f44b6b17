"""The training figure: loss curves (train and validation) and validation scores, from metrics.jsonl.

Drawn from the file rather than from memory so a resumed run's figure shows the whole run.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure  # a bare Figure, no pyplot: see model/figures/plots.py

SCORE_KEYS = {"val_bleu_4": "BLEU-4", "val_bleu_1": "BLEU-1", "val_rouge_l": "ROUGE-L"}  # 0..1
# CIDEr runs to 10, so it gets its own axis on the right rather than flattening the others.


def plot_curves(metrics: str | Path, out: str | Path, *, title: str = "") -> Path | None:
    """Write a two-panel PNG: losses by step (log scale) and validation scores by step. None if no rows."""
    path = Path(metrics)
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    evals = [r for r in rows if "val_loss" in r]
    fig = Figure(figsize=(11, 4.2))
    losses, scores = fig.subplots(1, 2)
    losses.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="train loss")
    if evals:
        losses.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation loss")
    losses.set(xlabel="optimiser step", ylabel="token cross-entropy", yscale="log", title="Loss")
    losses.legend()
    losses.grid(alpha=0.3)
    for key, name in SCORE_KEYS.items():
        if evals and key in evals[0]:
            scores.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=name)
    scores.set(xlabel="optimiser step", ylabel="BLEU, ROUGE-L", title="Validation (greedy reports)")
    if evals and "val_cider" in evals[0]:
        cider = scores.twinx()
        cider.plot([r["step"] for r in evals], [r["val_cider"] for r in evals], "s--", color="tab:red", label="CIDEr")
        cider.set_ylabel("CIDEr")
        handles = scores.get_legend_handles_labels()[0] + cider.get_legend_handles_labels()[0]
        scores.legend(handles=handles, loc="lower right")
    scores.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return Path(out)
