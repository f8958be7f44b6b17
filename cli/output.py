"""How results look on a terminal and in files. Formats here are documented in docs/cli.md.

Human-readable text passes every name and report through `printable` (control characters become
visible escapes, so a file name cannot retitle the terminal or split a table row); JSON, CSV and
Parquet keep the data as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from model.printable import printable

if TYPE_CHECKING:
    from db.queries import JobSummary
    from worker.submit import Submission

OUTPUT_HINT = "'-o' / '--output'"


class Progress:
    """A tqdm bar on standard error when it is a terminal; silent otherwise.

    Counted work (`start(total)`, then `update(n)`) shows its rate and the time left; work in named
    stages (`stage("scoring")`) shows which stage runs, as step k of n.
    """

    def __init__(self, enabled: bool, *, desc: str = "Reporting", unit: str = "study", scaled: bool = False) -> None:
        self.enabled = enabled
        self.desc = desc
        self.unit = unit
        self.scaled = scaled  # bytes: shown as kB, MB, GB (unit "B")
        self._bar: Any = None

    def start(self, total: int | None) -> None:
        """Counted work of `total` units; None: of a number not known yet (a counter and a rate)."""
        if self.enabled and (total or total is None):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=self.unit, desc=self.desc, leave=False, dynamic_ncols=True,
                             unit_scale=self.scaled, unit_divisor=1024 if self.scaled else 1000)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def stage(self, name: str, done: int, total: int) -> None:
        """Stage `name` begins, after `done` of `total` stages (the bar appears at the first)."""
        if not self.enabled:
            return
        if self._bar is None:
            self.unit = "step"
            self.start(total)
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_description(f"{self.desc}: {name}")  # redraws the bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def stderr_is_terminal() -> bool:
    """Whether progress bars are wanted: standard error is a terminal (never under a pipe or a test)."""
    return sys.stderr.isatty()


# Output paths: checked when the command line is read, before any work (`evaluate -o` used to fail
# after storing its run), and nothing is created but what the user named, inside a folder that exists.

def output_file(path: Path, *, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` if a file can be written there (its folder exists, it is not a folder); else BadParameter."""
    shown = printable(str(path))
    if suffixes and path.suffix.lower() not in suffixes:
        raise click.BadParameter(f"{shown}: name a {' or '.join(suffixes)} file (the format follows the name)",
                                 param_hint=OUTPUT_HINT)
    if path.is_dir():
        raise click.BadParameter(f"{shown} is a folder; name a file", param_hint=OUTPUT_HINT)
    _check_parent(path, shown)
    if path.exists() and not os.access(path, os.W_OK):
        raise click.BadParameter(f"{shown} cannot be written (no permission)", param_hint=OUTPUT_HINT)
    return path


def output_folder(path: Path, *, parents: bool = False) -> Path:
    """`path` if it is a writable folder, or can be made as one inside a folder that exists; with
    `parents`, missing parents are made too (as `mkdir -p` and `xrq train --out` do): then the nearest
    existing ancestor must be a writable folder."""
    shown = printable(str(path))
    if path.exists():
        if not path.is_dir():
            raise click.BadParameter(f"{shown} is a file; name a folder", param_hint=OUTPUT_HINT)
        if not os.access(path, os.W_OK | os.X_OK):
            raise click.BadParameter(f"{shown} cannot be written (no permission)", param_hint=OUTPUT_HINT)
        return path
    if not parents:
        _check_parent(path, shown)
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise click.BadParameter(f"{shown}: {printable(str(ancestor))} is a file, not a folder", param_hint=OUTPUT_HINT)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{shown}: the folder {printable(str(ancestor))} cannot be written "
                                 "(no permission)", param_hint=OUTPUT_HINT)
    return path


def _check_parent(path: Path, shown: str) -> None:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise click.BadParameter(f"{shown}: the folder {printable(str(path.parent))} does not exist; create it "
                                 "first", param_hint=OUTPUT_HINT)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{shown}: the folder {printable(str(path.parent))} cannot be written "
                                 "(no permission)", param_hint=OUTPUT_HINT)


class OutputPath(click.Path):
    """An `-o` option checked by `output_file` or `output_folder` as the command line is read."""

    def __init__(self, kind: str = "file", suffixes: tuple[str, ...] = (), *, parents: bool = False) -> None:
        super().__init__(path_type=Path, dir_okay=kind == "folder", file_okay=kind == "file")
        self.kind = kind
        self.suffixes = suffixes
        self.parents = parents  # a folder: made with its missing parents

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = Path(value)
        try:
            if self.kind == "folder":
                return output_folder(path, parents=self.parents)
            return output_file(path, suffixes=self.suffixes)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


def write_text(path: Path, text: str) -> None:
    """Write a result file; a failure (disk full, permissions changed) is an `Error:`, not a traceback."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {printable(str(path))}: {exc.strerror or exc}") from exc


def format_from_name(path: Path | None, formats: tuple[str, ...], default: str) -> str:
    """The format a file's name asks for (`r.jsonl` -> jsonl), else `default`."""
    suffix = path.suffix.lower().lstrip(".") if path is not None else ""
    suffix = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    return suffix if suffix in formats else default


def submission_json(result: Submission, elapsed: float) -> dict[str, Any]:
    return {
        **result.summary.as_dict(),
        "created": result.created,
        "changed": {name: {"before": before, "now": now} for name, (before, now) in result.changed.items()},
        "retried": result.retried,
        "processed": result.ran,
        "queued": result.result.queued if result.result is not None else 0,
        "ignored": list(result.ignored),
        "files": result.scanned,
        "elapsed_s": round(elapsed, 3),
        "timings": result.timings.as_dict(),
        "unfinished": result.unfinished,
    }


def submission_text(result: Submission, elapsed: float) -> str:
    s = result.summary
    c = s.counts
    lines = []
    sent = result.result.queued if result.result is not None else 0  # handed to workers by this call
    if not result.created and not result.ran and not result.retried and not sent and not s.waiting:
        lines.append(f"Already submitted as job {s.job_id}: nothing new to do.")
    elif not result.created:
        lines.append(f"Submitted again as job {s.job_id}: what is left is done with this submission's settings.")
        if sent:
            lines.append(f"  queued {sent} studies that were still to do (never sent, or their message lost)")
    for name, (before, now) in result.changed.items():
        if name != "search":  # follows num_beams
            lines.append(f"  {name}: {_setting(name, before)} -> {_setting(name, now)}")
    if result.retried:
        lines.append(f"  retrying {result.retried} studies that had failed for a transient reason")
    lines += [
        f"Job {s.job_id}: {s.total} studies from {printable(s.source)} (model {printable(s.model)})",
        f"  reported  {c.get('done', 0)}",
        f"  failed    {c.get('failed', 0)}",
        f"  skipped   {c.get('skipped', 0)} (already reported by this model)",
    ]
    if result.ignored:
        shown = ", ".join(printable(name) for name in result.ignored[:5])
        more = f" and {len(result.ignored) - 5} more" if len(result.ignored) > 5 else ""
        lines.append(f"  ignored   {len(result.ignored)} files that are not pictures ({shown}{more})")
    if s.waiting and result.local:
        lines.append(f"  unfinished {s.waiting} (this run could not finish them; they stay open)")
    elif s.waiting:
        lines.append(f"  waiting   {s.waiting} (queued for workers; `xrq status {s.job_id}` follows them)")
    lines += _failure_lines(s)
    if result.ran:
        lines.append(f"Took {elapsed:.1f} s ({result.ran / elapsed:.2f} studies/s)")
    return "\n".join(lines)


def _setting(name: str, value: Any) -> str:
    return "auto" if name == "batch_size" and not value else str(value)  # a job stores auto as 0


def _failure_lines(summary: JobSummary) -> list[str]:
    if not summary.failures:
        return []
    return ["Failed:"] + [f"  {printable(f.reason)}" if f.reason.startswith(f.uid)
                          else f"  {printable(f.uid)}: {printable(f.reason)}" for f in summary.failures]


def status_text(summaries: list[JobSummary], *, detailed: bool) -> str:
    if not summaries:
        return "No jobs yet. Start one with `xrq submit FOLDER --model DIR`."
    header = f"{'job':>5}  {'created':19}  {'studies':>7}  {'done':>5}  {'failed':>6}  {'skipped':>7}  " \
             f"{'waiting':>7}  source"
    lines = [header]
    for s in summaries:
        c = s.counts
        lines.append(f"{s.job_id:>5}  {s.created_at:%Y-%m-%d %H:%M:%S}  {s.total:>7}  {c.get('done', 0):>5}  "
                     f"{c.get('failed', 0):>6}  {c.get('skipped', 0):>7}  {s.waiting:>7}  {printable(s.source)}")
    if detailed:
        lines.append(f"model: {printable(summaries[0].model)}")
        lines += _failure_lines(summaries[0])
    return "\n".join(lines)


def evaluation_text(run: Any) -> str:
    """An evaluation as a small table: the field's metrics, then what published tools don't show."""
    s = run.result.scores
    c = s.corpus
    split = f", split {run.split}" if run.split else ""
    lines = [f"Evaluation {run.evaluation_id}: {run.source} {printable(run.source_ref)} against "
             f"{printable(run.collection)}{split} ({run.text}), {s.n_studies} studies"]
    if run.source != "baseline":  # a baseline writes a report for every study of the truth
        lines.append("  " + match_text(run))
    names = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
    lines.append("  " + "  ".join(f"{n:>7}" for n in names))
    lines.append("  " + "  ".join(f"{'n/a':>7}" if c[k] is None else f"{c[k]:>7.3f}" for k in keys))
    if s.meteor_error:
        lines.append(f"  METEOR unavailable: {printable(s.meteor_error)}")
    lines.append("  NLTK BLEU-1..4: " + " ".join(f"{c[f'nltk_bleu_{i}']:.3f}" for i in range(1, 5)))
    lines.append(f"  distinct reports: {s.distinct_reports} of {s.n_studies}")
    labels = run.result.labels
    observed = sum(1 for p in labels.per_observation.values() if p.support)
    lines.append(f"  clinical findings F1 (CheXpert observations): micro {labels.micro.f1:.3f}, "
                 f"macro {labels.macro.f1:.3f} (the {observed} of {len(labels.per_observation)} with positive "
                 "studies)")
    if run.result.normal is not None:
        n = run.result.normal
        lines.append(f"  normal vs abnormal (MeSH): accuracy {n.accuracy:.3f}, F1 {n.f1:.3f}, kappa {n.kappa:.3f}")
    for name, other in (run.result.sections or {}).items():
        lines.append(f"  {name} section beside it ({other['n_studies']} studies, against the {name} ground truth): "
                     f"BLEU-4 {other['bleu_4']:.3f}, ROUGE-L {other['rouge_l']:.3f}, CIDEr {other['cider']:.3f}, "
                     f"clinical F1 micro {other['clinical_f1_micro']:.3f}")
    cal = run.result.calibration
    if cal is not None:
        def rho(value: float | None) -> str:
            return "n/a" if value is None else f"{value:+.3f}"

        lines.append(f"  confidence vs quality ({cal.n} studies): Spearman rho with BLEU-4 {rho(cal.spearman_bleu_4)}, "
                     f"with clinical F1 {rho(cal.spearman_clinical_f1)}")
        lines.append("    by confidence: " + ", ".join(
            f"{b.low:.2f}-{b.high:.2f} F1 {b.clinical_f1:.2f}" for b in cal.bins))
    lines += [f"  wrote {printable(str(p))}" for p in run.files]
    return "\n".join(lines)


def match_text(run: Any) -> str:
    """How the reports met the ground truth: given, with ground truth at all, scored here."""
    m = run.matched
    what = "predictions" if run.source == "predictions" else "reports"
    column = f" (by {printable(m.id_column)})" if m.id_column else ""
    text = f"{m.given} {what}: {m.known} matched ground truth ids{column}, {m.scored} scored"
    if m.known > m.scored:
        text += f" ({m.known - m.scored} outside split {run.split} or without {run.text})" if run.split \
            else f" ({m.known - m.scored} without {run.text})"
    return text


def activity_text(act: Any) -> str:
    """The last hour's throughput and the most common failure reasons."""
    lines = [f"last hour: {act.reports} reports ({act.reports / 60:.1f}/min), {act.failures} failures"]
    if act.by_reason:
        lines.append("failures by reason, last 24 hours:")
        lines += [f"  {n:>6}  {printable(reason)}" for reason, n in act.by_reason]
    return "\n".join(lines)
