"""How results look on a terminal and in files. Formats here are documented in docs/cli.md."""

from __future__ import annotations

import csv
import io
import json
import shutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db.queries import JobSummary, ReportRow
    from worker.submit import Submission


class Progress:
    """A tqdm bar on standard error when it is a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="study", desc="Reporting", leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def submission_json(result: Submission, elapsed: float) -> dict[str, Any]:
    return {
        **result.summary.as_dict(),
        "created": result.created,
        "processed": result.ran,
        "files": result.scanned,
        "elapsed_s": round(elapsed, 3),
        "timings": result.timings.as_dict(),
    }


def submission_text(result: Submission, elapsed: float) -> str:
    s = result.summary
    c = s.counts
    lines = []
    if not result.created and not result.ran:
        lines.append(f"Already submitted as job {s.job_id}: nothing new to do.")
    lines += [
        f"Job {s.job_id}: {s.total} studies from {s.source} (model {s.model})",
        f"  reported  {c.get('done', 0)}",
        f"  failed    {c.get('failed', 0)}",
        f"  skipped   {c.get('skipped', 0)} (already reported by this model)",
    ]
    if s.waiting:
        lines.append(f"  waiting   {s.waiting} (queued for workers; `xrq status {s.job_id}` follows them)")
    lines += _failure_lines(s)
    if result.ran:
        lines.append(f"Took {elapsed:.1f} s ({result.ran / elapsed:.2f} studies/s)")
    return "\n".join(lines)


def _failure_lines(summary: JobSummary) -> list[str]:
    if not summary.failures:
        return []
    return ["Failed:"] + [f"  {f.reason}" if f.reason.startswith(f.uid) else f"  {f.uid}: {f.reason}"
                          for f in summary.failures]


def status_text(summaries: list[JobSummary], *, detailed: bool) -> str:
    if not summaries:
        return "No jobs yet. Start one with `xrq submit FOLDER --model DIR`."
    header = f"{'job':>5}  {'created':19}  {'studies':>7}  {'done':>5}  {'failed':>6}  {'skipped':>7}  " \
             f"{'waiting':>7}  source"
    lines = [header]
    for s in summaries:
        c = s.counts
        lines.append(f"{s.job_id:>5}  {s.created_at:%Y-%m-%d %H:%M:%S}  {s.total:>7}  {c.get('done', 0):>5}  "
                     f"{c.get('failed', 0):>6}  {c.get('skipped', 0):>7}  {s.waiting:>7}  {s.source}")
    if detailed:
        lines.append(f"model: {summaries[0].model}")
        lines += _failure_lines(summaries[0])
    return "\n".join(lines)


def reports_text(rows: list[ReportRow], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r.as_dict()) + "\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        failed = any(r.status == "failed" for r in rows)
        writer.writerow(["study_id", "uid", "job_id", "model", "created_at", "images", "error" if failed else "report"])
        for r in rows:
            writer.writerow([r.study_id, r.uid, r.job_id, r.model, r.created_at.isoformat(),
                             ";".join(r.images), r.error if failed else r.text])
        return buf.getvalue()
    width = max(40, shutil.get_terminal_size((120, 20)).columns - 24)
    lines = [f"{'job':>4}  {'study':14}  report"]
    for r in rows:
        shown = r.text if r.status == "done" else f"FAILED: {r.error}"
        text = shown if len(shown) <= width else shown[: width - 1] + "…"
        lines.append(f"{r.job_id:>4}  {r.uid[:14]:14}  {text}")
    return "\n".join(lines) + "\n"


def evaluation_text(run: Any) -> str:
    """An evaluation as a small table: the field's metrics, then what published tools don't show."""
    s = run.result.scores
    c = s.corpus
    split = f", split {run.split}" if run.split else ""
    lines = [f"Evaluation {run.evaluation_id}: {run.source} {run.source_ref} against {run.collection}{split} "
             f"({run.text}), {s.n_studies} studies"]
    if run.without_truth:
        lines.append(f"  ({run.without_truth} reports without ground truth here were left out)")
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
    lines.append("  " + "  ".join(f"{n:>7}" for n in names))
    lines.append("  " + "  ".join(f"{'n/a':>7}" if c[k] is None else f"{c[k]:>7.3f}" for k in keys))
    if s.meteor_error:
        lines.append(f"  METEOR unavailable: {s.meteor_error}")
    lines.append("  NLTK BLEU-1..4: " + " ".join(f"{c[f'nltk_bleu_{i}']:.3f}" for i in range(1, 5)))
    lines.append(f"  distinct reports: {s.distinct_reports} of {s.n_studies}")
    labels = run.result.labels
    lines.append(f"  clinical findings F1 (14 CheXpert observations): micro {labels.micro.f1:.3f}, "
                 f"macro {labels.macro.f1:.3f}")
    if run.result.normal is not None:
        n = run.result.normal
        lines.append(f"  normal vs abnormal (MeSH): accuracy {n.accuracy:.3f}, F1 {n.f1:.3f}, kappa {n.kappa:.3f}")
    lines += [f"  wrote {p}" for p in run.files]
    return "\n".join(lines)


def activity_text(act: Any) -> str:
    """The last hour's throughput and the most common failure reasons."""
    lines = [f"last hour: {act.reports} reports ({act.reports / 60:.1f}/min), {act.failures} failures"]
    if act.by_reason:
        lines.append("failures by reason:")
        lines += [f"  {n:>6}  {reason}" for reason, n in act.by_reason]
    return "\n".join(lines)
