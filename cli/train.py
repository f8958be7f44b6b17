"""`xrq train`: fit a model on the IU collection (or continue a run with --resume)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

# The light module: `xrq --help` must not import torch (model.training.loop does): docs/architecture.md, cheap commands.
from model.defaults import PRESET_NAMES, VIEW_JOINS
from model.training.config import BEST_METRICS, TrainConfig

if TYPE_CHECKING:
    from model.training.loop import TrainResult

EXISTING_FILE = click.Path(exists=True, dir_okay=False)
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# CLI option name → TrainConfig field, for the options whose value is part of the stored configuration.
_CONFIG_OPTIONS = {f.name: f.name for f in fields(TrainConfig)}
# Options that change how this invocation runs, not what it produces: left out of the recorded command.
_SESSION_ONLY = {"resume", "stop_after", "workers", "as_json"}


@click.command()
@click.option("--reports", metavar="CSV", type=EXISTING_FILE, help="indiana_reports.csv  [required unless --resume]")
@click.option("--projections", metavar="CSV", type=EXISTING_FILE, help="indiana_projections.csv  [idem]")
@click.option("--images", metavar="DIR", type=click.Path(file_okay=False),
              help="Folder with (some of) the IU images, Kaggle or Open-i names, searched recursively.  [idem]")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: best/, last/, metrics.jsonl, curves.png.")
@click.option("--init", metavar="MODEL_DIR", help="Start from this xrq model (e.g. `xrq model init` output).")
@click.option("--encoder", metavar="ID_OR_PATH", help="Pretrained ViT to start from (hub id or directory).")
@click.option("--decoder", metavar="ID_OR_PATH", help="Pretrained GPT-2 to start from (hub id or directory).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=_DEFAULTS["preset"],
              help="Model sizes when not starting from --init. tiny: for tests and demos; small: trains from "
                   "scratch on a CPU in minutes; small-v2: small that knows which view and where (train it "
                   "with --augment); base: ViT-B/16 + GPT-2 small.")
@click.option("--tokenizer", type=click.Choice(["gpt2", "train"]), default=_DEFAULTS["tokenizer"],
              help="gpt2: the real GPT-2 vocabulary (needed with --decoder); train: a byte-level BPE fitted to "
                   "the training reports (far smaller; for decoders trained from scratch).")
@click.option("--vocab-size", type=int, default=_DEFAULTS["vocab_size"], help="With --tokenizer train: at most.")
@click.option("--split", type=click.Choice(["benchmark", "random", "all"]), default=_DEFAULTS["split"],
              help="benchmark: r2gen_split.csv's train/val (test never used); random: seeded 80/20 train/val; "
                   "all: train = val = every study (memorising a few studies; val scores then measure recall).")
@click.option("--split-file", metavar="CSV", type=EXISTING_FILE,
              help="With --split benchmark  [default: r2gen_split.csv beside --reports]")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], help="Seeds weights, split, batch order, dropout.")
@click.option("--text", type=click.Choice(["findings", "impression", "both"]), default=_DEFAULTS["text"],
              help="Which report section the model learns to write; both: findings then impression, each after "
                   "its marker (FINDINGS: / IMPRESSION:), stored apart in reports.findings and reports.impression.")
@click.option("--views", type=click.Choice(["frontal", "all"]), default=_DEFAULTS["views"],
              help="frontal: only images the projections CSV calls Frontal.")
@click.option("--max-tokens", type=int, default=_DEFAULTS["max_tokens"],
              help="Target reports are cut to this many tokens (eos included); also the validation report length.")
@click.option("--epochs", type=float, default=_DEFAULTS["epochs"], help="Passes over the training studies.")
@click.option("--max-steps", type=int, help="Optimiser steps; wins over --epochs.")
@click.option("--batch-size", type=int, default=_DEFAULTS["batch_size"], help="Studies per micro-batch.")
@click.option("--grad-accum", type=int, default=_DEFAULTS["grad_accum"], help="Micro-batches per optimiser step.")
@click.option("--lr", type=float, default=_DEFAULTS["lr"], help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=float, default=_DEFAULTS["weight_decay"], help="AdamW decay of weight matrices.")
@click.option("--warmup", type=int, default=_DEFAULTS["warmup"], help="Linear warm-up steps, then linear decay.")
@click.option("--clip", type=float, default=_DEFAULTS["clip"], help="Gradient norm clipping.")
@click.option("--dropout", type=float, help="Override every dropout probability (0 to memorise)  [default: model's]")
@click.option("--init-std", type=float, default=_DEFAULTS["init_std"], show_default=True,
              help="Std of the weights of parts trained from scratch (not --init/--encoder/--decoder); 0: the "
                   "preset's own (tiny: 0.3, which saturates attention and memorises instead of reading "
                   "images; small and base: 0.02).")
@click.option("--eval-every", type=int, default=_DEFAULTS["eval_every"],
              help="Validate and checkpoint every N steps (and at the end).")
@click.option("--best-metric", type=click.Choice(BEST_METRICS), default=_DEFAULTS["best_metric"],
              help="Validation number that picks OUT/best (val_loss: lowest; the others: highest).")
@click.option("--augment", is_flag=True,
              help="Shift, zoom and re-expose each training view a little at random (never flipped: that "
                   "would swap the sides a report names).")
@click.option("--view-join", type=click.Choice(VIEW_JOINS),
              help="What marks each view's tokens before they are joined (ablations): none, the view-slot "
                   "embedding, 2-D positions, both  [default: the preset's; small-v2: both]")
@click.option("--bf16/--no-bf16", default=True, help="bf16 autocast on CUDA (ignored on CPU).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from OUT/last, exactly, with its settings.")
@click.option("--stop-after", type=int, metavar="N",
              help="Stop (saving OUT/last) after N steps of this session; --resume continues. For time-limited slots.")
@click.option("--device", default=None, help="cuda, cuda:1, cpu  [default: cuda if available]")
@click.option("--workers", type=int, help="Image-loading processes  [default: 0 when images are cached, else up to 4]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train(ctx: click.Context, out: Path, resume: bool, stop_after: int | None, device: str | None,
          workers: int | None, as_json: bool, **options: Any) -> None:
    """Train the ViT + GPT-2 model end to end on IU X-rays and their reports.

    Uses whatever IU images are under --images (missing ones are counted, not fatal). Validates every
    --eval-every steps; keeps OUT/best (by --best-metric) and OUT/last (resumable); writes
    OUT/metrics.jsonl and OUT/curves.png. Two CPU runs with the same seed give identical weights.

    \b
    Examples:
      xrq train --reports data/iu/indiana_reports.csv --projections data/iu/indiana_projections.csv \\
          --images /data/iu/images --out runs/base --preset base \\
          --encoder google/vit-base-patch16-224-in21k --decoder gpt2 --split benchmark --epochs 30
      xrq train --out runs/base --resume
    """
    from model.training.loop import resume as resume_run
    from model.training.loop import resume_config
    from model.training.loop import train as train_run

    progress = _Bar(enabled=not as_json)
    if resume:
        _check_resume_options(ctx, resume_config(out))
        progress.warmup = resume_config(out).warmup
        result = resume_run(out, device=device, workers=workers, stop_after=stop_after, progress=progress)
    else:
        missing = [f"--{k}" for k in ("reports", "projections", "images") if not options[k]]
        if missing:
            raise click.UsageError(f"Missing {', '.join(missing)} (needed unless --resume).")
        config = TrainConfig(**{k: v for k, v in options.items() if k in _DEFAULTS})
        progress.warmup = config.warmup
        result = train_run(config, out, device=device, workers=workers, stop_after=stop_after, progress=progress,
                           command=_command(ctx))
    progress.close()
    click.echo(json.dumps(_as_json(result)) if as_json else _text(result))
    stuck = _metric_never_moved(result)
    if stuck:
        click.echo(f"Warning: {stuck}", err=True)


def _metric_never_moved(r: TrainResult) -> str | None:
    """A warning when the number that picks OUT/best was 0 at every validation: best is then simply the
    first checkpoint (nothing was chosen), which a user would otherwise take for the best model."""
    metric = r.best_metric
    if not metric or metric == "val_loss" or not r.finished:
        return None
    metrics = r.out / "metrics.jsonl"
    values = [row[metric] for row in map(json.loads, metrics.read_text().splitlines())
              if row.get(metric) is not None] if metrics.is_file() else []
    if not values or any(v != 0 for v in values):
        return None
    return (f"the best-checkpoint metric {metric} stayed 0 at all {len(values)} validations, so {r.out / 'best'} "
            "is only the first checkpoint: train longer, or pick it by --best-metric val_loss")


def _command(ctx: click.Context) -> str:
    """The command line that reproduces this run: every option given (bar session-only ones), in order."""
    parts = ["xrq", "train"]
    for param in ctx.command.params:
        name = param.name or ""
        given = ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        if not given or name in _SESSION_ONLY:
            continue
        value = ctx.params[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if name == "bf16":
                parts.append("--bf16" if value else "--no-bf16")
            elif value:
                parts.append(flag)
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def _check_resume_options(ctx: click.Context, stored: TrainConfig) -> None:
    """--resume continues the stored configuration: refuse options given now that contradict it."""
    clashes = []
    for name, value in ctx.params.items():
        given = name in _CONFIG_OPTIONS and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        if given and getattr(stored, _CONFIG_OPTIONS[name]) != value:
            clashes.append(f"--{name.replace('_', '-')} {value} (the run has {getattr(stored, name)})")
    if clashes:
        raise click.UsageError("--resume continues the run with its stored settings; drop " + ", ".join(clashes))


class _Bar:
    """A tqdm bar (loss, images/s) on a terminal's stderr; plain lines at each validation otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._bar: Any = None

    warmup = 0  # the run's warm-up steps, to say when they outlast it

    def start(self, data: Any, first_step: int, total_steps: int) -> None:
        if self.warmup > total_steps:
            click.echo(f"Warning: --warmup {self.warmup} is longer than the run ({total_steps} steps): the "
                       f"learning rate never reaches --lr (it peaks at {total_steps / self.warmup:.0%} of it); "
                       f"lower --warmup or train longer", err=True)
        if not self.enabled:
            return
        click.echo(_data_line(data.as_dict()), err=True)
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=first_step, unit="step", desc="Training", leave=False)

    def row(self, row: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{row['images_per_s']:.1f}", refresh=False)
        if self.enabled and "val_loss" in row:
            line = f"step {row['step']}: {_score_line(row)}"
            (self._bar.write if self._bar is not None else lambda s: click.echo(s, err=True))(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _data_line(d: dict[str, int]) -> str:
    return (f"Data: {d['train']} studies to train on, {d['val']} to validate on; skipped {d['empty_text']} with an "
            f"empty text, {d['without_images']} without any image present, {d['not_in_split']} outside the split "
            f"({d['images_used']} images used, {d['images_missing']} listed images missing)")


def _score_line(s: dict[str, Any]) -> str:
    return (f"val loss {s['val_loss']:.4f}, BLEU-4 {s['val_bleu_4']:.3f}, ROUGE-L {s['val_rouge_l']:.3f}, "
            f"CIDEr {s['val_cider']:.3f}, {s['val_distinct_reports']} distinct reports of {s['val_studies']}")


def _text(r: TrainResult) -> str:
    lines = [f"Trained to step {r.step} of {r.total_steps} in {r.seconds:.1f} s"]
    if r.scores:
        lines.append(f"Validation: {_score_line(r.scores)}")
    if r.best is not None:
        lines.append(f"Best ({r.best_metric} {r.best_score} at step {r.best_step}): {r.best}")
    lines.append(f"Last: {r.last}" + ("" if r.finished else f"  (continue: xrq train --out {r.out} --resume)"))
    lines.append(f"Curves: {r.out / 'curves.png'}, rows: {r.out / 'metrics.jsonl'}")
    return "\n".join(lines)


def _as_json(r: TrainResult) -> dict[str, Any]:
    return {"out": str(r.out), "step": r.step, "total_steps": r.total_steps, "finished": r.finished,
            "best": str(r.best) if r.best else None, "best_score": r.best_score,
            "best_metric": r.best_metric, "best_step": r.best_step, "last": str(r.last),
            "scores": r.scores, "data": r.data.as_dict(), "seconds": round(r.seconds, 3)}
