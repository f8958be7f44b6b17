"""`xrq truth import` and `xrq evaluate`: ground truth in, scores out."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.context import settings_from
from cli.output import OutputPath

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def truth() -> None:
    """Import ground-truth reports to score against."""


@truth.command("import")
@click.argument("reports_csv", type=EXISTING_FILE)
@click.argument("projections_csv", type=EXISTING_FILE, required=False)
@click.option("--split-file", type=EXISTING_FILE,
              help="CSV of uid,split (the benchmark split: r2gen_split.csv). Default: a seeded random 80/20 split.")
@click.option("--seed", type=int, default=0, help="Seed of the random split.")
@click.option("--collection", default=None, help="Name of this ground truth  [default: iu, or 'csv' with --generic]")
@click.option("--generic", is_flag=True, help="Any CSV with a study id column and a report column (not IU).")
@click.option("--id-column", default="study_id", help="With --generic: the study id column.")
@click.option("--report-column", default="report", help="With --generic: the report column.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def import_(ctx: click.Context, reports_csv: Path, projections_csv: Path | None, split_file: Path | None,
            seed: int, collection: str | None, generic: bool, id_column: str, report_column: str,
            as_json: bool) -> None:
    """Load ground truth: the IU Kaggle CSVs, or any CSV of (study id, report) with --generic.

    Importing the same files again changes nothing.

    \b
    Examples:
      xrq truth import indiana_reports.csv indiana_projections.csv --split-file r2gen_split.csv
      xrq truth import other.csv --generic --id-column accession --report-column text --collection other
    """
    from worker.evaluate import import_csv, import_iu

    settings = settings_from(ctx)
    if generic:
        counts = import_csv(settings, reports_csv, collection=collection or "csv", id_column=id_column,
                            report_column=report_column, seed=seed)
    else:
        counts = import_iu(settings, reports_csv, projections_csv, split_file=split_file, seed=seed,
                           collection=collection or "iu")
    if as_json:
        click.echo(json.dumps(counts.as_dict()))
    else:
        click.echo(f"Ground truth: {counts.added} studies added, {counts.changed} changed, "
                   f"{counts.unchanged} unchanged; {counts.images_added} image names added.")


@click.command()
@click.option("--job", "job_id", type=int, help="Score the reports of this job.")
@click.option("--model", metavar="NAME", help="Score every report of this model (name, path or fingerprint).")
@click.option("--predictions", type=EXISTING_FILE,
              help="Score another system's CSV, JSONL or Parquet of (study id, report[, confidence]).")
@click.option("--baseline", type=click.Choice(["most-frequent"]),
              help="Score the most frequent training report, emitted for every study.")
@click.option("--truth", "truth_kind", type=click.Choice(["imported", "signed"]), default="imported",
              help="imported: the ground truth of `xrq truth import`; signed: what radiologists signed in `xrq serve` "
                   "(per model and job; with --job or --model, only theirs).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Only studies of this split.")
@click.option("--text", type=click.Choice(["findings", "impression", "both"]), default="findings",
              help="Which part of the ground truth is the reference.")
@click.option("--collection", help="Which imported ground truth  [default: the only one]")
@click.option("--id-column", help="With --predictions: the column/key holding the study uid  "
                                   "[default: uid if the file has it (xrq's own files), else study_id]")
@click.option("--report-column", default="report", help="With --predictions: the report column/key.")
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (it needs Java and takes seconds).")
@click.option("-o", "--output", "out_dir", type=OutputPath("folder", parents=True),
              help="Also write evaluation.json and evaluation.png to this folder (made if absent, in a folder "
                   "that exists).")
@click.option("--json", "as_json", is_flag=True, help="Print the corpus scores as JSON.")
@click.pass_context
def evaluate(ctx: click.Context, job_id: int | None, model: str | None, predictions: Path | None,
             baseline: str | None, truth_kind: str, split: str | None, text: str, collection: str | None,
             id_column: str | None, report_column: str, no_meteor: bool, out_dir: Path | None, as_json: bool) -> None:
    """Score reports against ground truth as the field does (BLEU, METEOR, ROUGE-L, CIDEr, ...).

    The run is stored in the `evaluations` and `evaluation_scores` tables. Predictions are matched to
    the ground truth by study uid; a file whose ids mostly match no study is refused.

    \b
    Examples:
      xrq evaluate --baseline most-frequent --split test
      xrq evaluate --job 3 --split test -o out/eval3
      xrq evaluate --predictions other_system.jsonl --split test
      xrq reports --job 3 -o r.jsonl && xrq evaluate --predictions r.jsonl
      xrq evaluate --truth signed --json
    """
    from cli.output import Progress, evaluation_text, stderr_is_terminal

    if truth_kind == "signed":
        if predictions or baseline or split or collection:
            raise click.UsageError("--truth signed scores stored drafts: use it with --job or --model, or alone")
        from worker.evaluate_signed import run_signed_evaluation, signed_text

        bar = Progress(stderr_is_terminal(), desc="Evaluating")
        try:
            signed = run_signed_evaluation(settings_from(ctx), job_id=job_id, model=model, with_meteor=not no_meteor,
                                           out_dir=out_dir, on_stage=bar.stage)
        finally:
            bar.close()
        click.echo(json.dumps(signed.summary()) if as_json else signed_text(signed))
        return
    from worker.evaluate import run_evaluation

    bar = Progress(stderr_is_terminal(), desc="Evaluating")
    try:
        run = run_evaluation(
            settings_from(ctx), job_id=job_id, model=model, predictions=str(predictions) if predictions else None,
            baseline=baseline, split=split, text=text, collection=collection, id_column=id_column,
            report_column=report_column, with_meteor=not no_meteor, out_dir=out_dir, on_stage=bar.stage,
        )
    finally:
        bar.close()
    click.echo(json.dumps(run.summary()) if as_json else evaluation_text(run))
