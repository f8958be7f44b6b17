"""Fit the encoder-decoder end to end on paired X-rays and reports: `xrq train`.

AdamW (weight decay on matrices only), linear warm-up then linear decay, gradient clipping, gradient
accumulation, bf16 autocast on CUDA. Every `eval_every` steps and at the end the model is scored on the
validation split (teacher-forced loss, and the evaluation job's metrics on greedy reports); the best
model by `best_metric` is kept as OUT/best, the latest as OUT/last with what resuming needs.

Reproducible: the run is a pure function of its `TrainConfig` on one device. Weights come from the
seed, batches from a plan that depends only on (seed, step) (see model.training.data), dropout from the global
torch RNG seeded once; evaluation runs under `fork_rng`, so scoring never changes what is learned.
Resuming restores weights, optimiser, scheduler and RNG states from OUT/last and re-enters the batch
plan at the saved step, so K steps + resume to N gives the weights of N steps, bit for bit (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from model.defaults import PRESETS
from model.figures.curves import plot_curves
from model.inference.generate import GenerationSettings, device_view_mask, generate_from_pixels, report_labels
from model.metrics.evaluation import evaluate
from model.network.bundle import Bundle, build, resolve_device, sincos_positions
from model.network.store import load, save
from model.training.augment import augment, generator
from model.training.config import BEST_METRICS, TrainConfig
from model.training.data import (
    DataSummary,
    Example,
    MicroBatches,
    StudyImages,
    TrainingData,
    TrainingError,
    load_data,
    loader,
    view_bytes,
)
from model.training.state import (
    append_row,
    clear_unstarted,
    has_checkpoint,
    last_info,
    load_state,
    read_start,
    replace_dir,
    save_state,
    truncate_rows,
    write_start,
)
from model.training.tokenizer import save_trained_tokenizer

CACHE_MAX_BYTES = 2 << 30
"""Training images are decoded once and kept in RAM when their grey levels fit in this (50 KB a 224-px
view: about 40,000 views, the whole IU collection five times over); else loader workers decode them."""
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
log = logging.getLogger(__name__)


class Progress(Protocol):
    """What the trainer reports while it runs (the CLI draws a progress bar from it)."""

    def start(self, data: DataSummary, first_step: int, total_steps: int) -> None: ...

    def row(self, row: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    out: Path
    step: int
    total_steps: int
    data: DataSummary
    last: Path
    best: Path | None
    best_score: float | None
    best_metric: str | None
    best_step: int | None
    scores: dict[str, Any]  # the last validation's
    finished: bool  # False when stopped by `stop_after` (continue with resume)
    seconds: float


@dataclass
class _Run:
    """A run's moving parts, so helpers take one argument instead of nine."""

    config: TrainConfig
    out: Path
    bundle: Bundle
    data: TrainingData
    train_set: StudyImages
    val_set: StudyImages
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    device: torch.device
    command: str | None
    best: dict[str, Any]
    workers: int = 0


def train(config: TrainConfig, out: str | Path, *, device: str | None = None, workers: int | None = None,
          stop_after: int | None = None, progress: Progress | None = None, command: str | None = None) -> TrainResult:
    """Train a new model into `out` (which must not hold a run yet)."""
    out = Path(out)
    _check(config)
    if (out / "last").exists() or has_checkpoint(out):
        raise TrainingError(f"{out} already holds a training run; continue it with --resume or choose a new --out.")
    if clear_unstarted(out, (METRICS_FILE, CURVES_FILE)):  # stopped before its first checkpoint: nothing to keep
        log.warning("%s held a run stopped before its first checkpoint; starting it afresh", out)
    data = _load_data(config)
    bundle = _initial_bundle(config, data.train)
    torch.manual_seed(config.seed)  # dropout; weights and batch order have their own seeded generators
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    run = _prepare(config, out, bundle, data, device, command, best={})
    write_start(out, {"config": asdict(config), "command": command})
    return _loop(run, 0, workers, stop_after, progress)


def resume(out: str | Path, *, device: str | None = None, workers: int | None = None,
           stop_after: int | None = None, progress: Progress | None = None) -> TrainResult:
    """Continue the run in `out` from OUT/last, exactly where it stopped, with its stored configuration."""
    out = Path(out)
    start = read_start(out)
    if start is not None and not has_checkpoint(out):  # stopped before its first checkpoint: start it again
        log.warning("%s has no checkpoint yet: restarting its run from step 0 with its settings", out)
        return train(TrainConfig.from_dict(start["config"]), out, device=device, workers=workers,
                     stop_after=stop_after, progress=progress, command=start.get("command"))
    info = last_info(out)
    config = TrainConfig.from_dict(info["config"])
    data = _load_data(config)
    if data.summary.train != info["n_train"]:
        raise TrainingError(f"The training data changed since {out}/last was saved ({info['n_train']} studies "
                            f"then, {data.summary.train} now); resume needs the same images.")
    bundle = load(out / "last", device="cpu")
    run = _prepare(config, out, bundle, data, device, info.get("command"), best=info.get("best", {}))
    load_state(out / "last", run.optimizer, run.scheduler)
    truncate_rows(out / METRICS_FILE, info["step"])
    return _loop(run, int(info["step"]), workers, stop_after, progress)


def resume_config(out: str | Path) -> TrainConfig:
    """The configuration the run in `out` was started with."""
    start = read_start(Path(out))
    if start is not None and not has_checkpoint(Path(out)):
        return TrainConfig.from_dict(start["config"])
    return TrainConfig.from_dict(last_info(Path(out))["config"])


# --- setting up -----------------------------------------------------------------------------------


def _check(config: TrainConfig) -> None:
    if config.best_metric not in BEST_METRICS:
        raise TrainingError(f"best_metric must be one of {', '.join(BEST_METRICS)}, not {config.best_metric!r}.")
    if config.tokenizer not in ("gpt2", "train"):
        raise TrainingError(f"tokenizer must be 'gpt2' or 'train', not {config.tokenizer!r}.")
    if config.tokenizer == "train" and (config.decoder or config.init):
        raise TrainingError("--tokenizer train is for decoders trained from scratch: a pretrained GPT-2 "
                            "(--decoder) or an --init model needs its own vocabulary. Drop one of them.")
    if config.init and (config.encoder or config.decoder):
        raise TrainingError("Give either --init MODEL_DIR or --encoder/--decoder, not both.")
    if min(config.batch_size, config.grad_accum, config.eval_every, config.max_tokens) < 1 or config.lr <= 0:
        raise TrainingError("batch size, grad-accum, eval-every, max-tokens and lr must be positive.")
    if config.max_steps is None and config.epochs <= 0:
        raise TrainingError("Give a positive --epochs or --max-steps.")


def _load_data(config: TrainConfig) -> TrainingData:
    return load_data(config.reports, config.projections, config.images, text=config.text, views=config.views,
                     split=config.split, seed=config.seed, split_file=config.split_file,
                     val_fraction=config.val_fraction)


def _initial_bundle(config: TrainConfig, train: Sequence[Example]) -> Bundle:
    """The model training starts from: --init, or built from the preset / pretrained parts."""
    if config.init:
        return load(config.init, device="cpu")
    if config.tokenizer == "gpt2":
        bundle = build(config.preset, encoder=config.encoder, decoder=config.decoder, seed=config.seed,
                       max_views=config.max_views, view_join=config.view_join)
    else:
        with tempfile.TemporaryDirectory() as folder:  # build() reads a tokenizer directory
            save_trained_tokenizer([e.text for e in train], folder, config.vocab_size)
            bundle = build(config.preset, encoder=config.encoder, tokenizer=folder, seed=config.seed,
                           max_views=config.max_views, view_join=config.view_join)
        bundle.meta.sources["tokenizer"] = (
            f"byte-level BPE ({len(bundle.tokenizer)} tokens) trained on the {len(train)} training reports")
    _reinitialise(bundle, config)
    positions = int(getattr(bundle.model.config.decoder, "n_positions", PRESETS["tiny"]["decoder"]["n_positions"]))
    if config.max_tokens > positions:
        raise TrainingError(f"--max-tokens {config.max_tokens} exceeds the decoder's {positions} positions.")
    return bundle


def _reinitialise(bundle: Bundle, config: TrainConfig) -> None:
    """Redraw the parts built from scratch with `config.init_std` (seeded), as the preset would with it.

    The same modules, rebuilt from their configs with another initializer_range, so every tensor keeps
    its own scheme (zero biases, unit norms, GPT-2's scaled residual projections); the saved configs
    then say the range the weights were drawn with. A pretrained part is left alone.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    model = bundle.model
    # The modules read these very objects, so setting initializer_range below is what the saved configs say.
    parts: dict[str, Any] = {"encoder": model.config.encoder, "decoder": model.config.decoder}
    redraw = [name for name in parts if getattr(config, name) is None]  # built from the preset, not pretrained
    if not config.init_std or all(parts[n].initializer_range == config.init_std for n in redraw):
        return
    configs = {name: copy.deepcopy(part) for name, part in parts.items()}
    for name in redraw:
        configs[name].initializer_range = config.init_std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # what build() does, so the same seed draws the same weights
        fresh = {"encoder": AutoModel.from_config(configs["encoder"]),
                 "decoder": AutoModelForCausalLM.from_config(configs["decoder"])}
    if "encoder" in redraw and PRESETS[config.preset].get("positions") == "sincos":
        sincos_positions(fresh["encoder"])  # what build() starts this preset's positions at, whatever the std
    for name in redraw:
        getattr(model, name).load_state_dict(fresh[name].state_dict())
        parts[name].initializer_range = config.init_std


def _prepare(config: TrainConfig, out: Path, bundle: Bundle, data: TrainingData, device: str | None,
             command: str | None, best: dict[str, Any]) -> _Run:
    dev = resolve_device(device)
    bundle.model.to(dev)  # type: ignore[arg-type]
    images = sum(len(e.images) for e in data.train) + sum(len(e.images) for e in data.val)
    cache = images * view_bytes(bundle.processor) <= CACHE_MAX_BYTES
    train_set = StudyImages(data.train, bundle.processor, bundle.max_views, cache=cache)
    same = [e.uid for e in data.val] == [e.uid for e in data.train]
    val_set = train_set if same else StudyImages(data.val, bundle.processor, bundle.max_views, cache=cache)
    per_epoch = math.ceil(len(data.train) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))
    if config.dropout is not None:
        for module in bundle.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = config.dropout
    optimizer, scheduler = _optimiser(bundle.model, config, total)
    out.mkdir(parents=True, exist_ok=True)
    return _Run(config, out, bundle, data, train_set, val_set, optimizer, scheduler, total, dev, command, best)


def _optimiser(model: torch.nn.Module, config: TrainConfig, total: int) -> tuple[torch.optim.AdamW, Any]:
    """AdamW with decay on weight matrices only (not biases, norms: decaying those only hurts)."""
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    warmup = min(config.warmup, total - 1)

    def factor(step: int) -> float:  # step 0 already learns: (1 / warmup) of lr, never 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- the loop -------------------------------------------------------------------------------------


def _loop(run: _Run, step: int, workers: int | None, stop_after: int | None, progress: Progress | None) -> TrainResult:
    config, started = run.config, time.perf_counter()
    stop = run.total_steps if stop_after is None else min(run.total_steps, step + stop_after)
    if progress is not None:
        progress.start(run.data.summary, step, run.total_steps)
    run.workers = workers if workers is not None else (0 if run.train_set.cached else _default_workers())
    plan = MicroBatches(len(run.train_set), config.batch_size, config.seed, step * config.grad_accum,
                        stop * config.grad_accum)
    batches = iter(loader(run.train_set, plan, run.workers))
    scores: dict[str, Any] = {}
    while step < stop:
        row = _step(run, batches, step)
        step += 1
        row = {"step": step, "epoch": round(step * config.grad_accum / plan.per_epoch, 4), **row}
        if step % config.eval_every == 0 or step == run.total_steps:
            scores = _validate(run)
            row.update(scores)
            _checkpoint(run, step, scores)
        elif step == stop:
            _save_last(run, step, scores)
        append_row(run.out / METRICS_FILE, row)
        if progress is not None:
            progress.row(row)
    plot_curves(run.out / METRICS_FILE, run.out / CURVES_FILE, title=f"xrq train: {run.out}")
    best = run.out / "best"
    return TrainResult(run.out, step, run.total_steps, run.data.summary, run.out / "last",
                       best if best.is_dir() else None, run.best.get("score"), run.best.get("metric"),
                       run.best.get("step"), scores, step == run.total_steps,
                       time.perf_counter() - started)


def _default_workers() -> int:
    """Image-decoding processes: up to 4, leaving a core for the training step itself."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _step(run: _Run, batches: Any, step: int) -> dict[str, Any]:
    """One optimiser step (number `step`, from 0) over `grad_accum` micro-batches; its metrics.jsonl row."""
    model, config = run.bundle.model, run.config
    model.train()
    tic = time.perf_counter()
    total_loss, parts, images = torch.zeros((), device=run.device), 0, 0
    draws = generator(config.seed, step) if config.augment else None
    for _ in range(config.grad_accum):
        batch = next(batches)
        if batch is None:  # every study of this micro-batch was unreadable
            continue
        pixels, mask, texts, _ = batch
        if draws is not None:
            pixels = augment(pixels, draws)  # shift, zoom, exposure; never a flip
        loss = _loss(run, pixels, mask, texts)
        (loss / config.grad_accum).backward()
        total_loss += loss.detach()
        parts, images = parts + 1, images + int(mask.sum())
    lr = run.scheduler.get_last_lr()[0]
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    mean_loss = float(total_loss) / max(parts, 1)  # the one host sync per step
    seconds = time.perf_counter() - tic
    return {"loss": round(mean_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 4),
            "images": images, "images_per_s": round(images / seconds, 3)}


def _loss(run: _Run, pixels: torch.Tensor, mask: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Mean token cross-entropy of the texts given the views: (B, V, 3, H, W), (B, V), B texts."""
    dev = run.device
    labels = report_labels(run.bundle.tokenizer, texts, run.config.max_tokens).to(dev)  # (B, L), -100 = padding
    # The decoder sees [start] + labels[:-1]; padding is at the end, so this mask only silences a warning.
    seen = torch.cat([torch.ones_like(labels[:, :1]), (labels[:, :-1] != -100).long()], dim=1)  # (B, L)
    with _autocast(dev, run.config.bf16):
        out = run.bundle.model(pixel_values=pixels.to(dev, non_blocking=True), view_mask=device_view_mask(mask, dev),
                               labels=labels, decoder_attention_mask=seen)
    return out.loss


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (weights and optimiser stay fp32); fp32 elsewhere."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- validation -----------------------------------------------------------------------------------


def _validate(run: _Run) -> dict[str, Any]:
    """Validation loss and the evaluation job's metrics on greedy reports of the val split.

    Runs under fork_rng, so it consumes no random numbers the training would have drawn.
    """
    if not run.data.val:
        return {}
    model, config = run.bundle.model, run.config
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    in_order = [list(range(i, min(i + config.batch_size, len(run.val_set))))
                for i in range(0, len(run.val_set), config.batch_size)]
    losses: list[tuple[float, int]] = []
    hypotheses: dict[str, str] = {}
    references: dict[str, str] = {}
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        model.eval()
        for batch in loader(run.val_set, in_order, 0 if run.val_set.cached else run.workers):
            if batch is None:
                continue
            pixels, mask, texts, uids = batch
            losses.append((float(_loss(run, pixels, mask, texts)), len(texts)))
            hypotheses.update(zip(uids, _generate(run, pixels, mask), strict=True))
            references.update(zip(uids, texts, strict=True))
    # The benchmark protocol maps rare reference words to <unk>; other splits score the plain text.
    train_texts = [e.text for e in run.data.train] if config.split == "benchmark" else None
    scores = evaluate(references, hypotheses, train_texts=train_texts, with_meteor=False).scores
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider")
    out = {f"val_{k}": round(float(scores.corpus[k] or 0.0), 6) for k in keys}
    n = sum(count for _, count in losses)
    return {"val_loss": round(sum(v * c for v, c in losses) / max(n, 1), 6), **out,
            "val_distinct_reports": scores.distinct_reports, "val_studies": scores.n_studies}


def _generate(run: _Run, pixels: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Greedy reports from already preprocessed views: the inference path, at the training's precision."""
    settings = GenerationSettings(max_new_tokens=run.config.max_tokens)
    return generate_from_pixels(run.bundle, pixels, mask, settings, device=run.device, bf16=run.config.bf16)


# --- checkpoints ------------------------------------------------------------------------


def _checkpoint(run: _Run, step: int, scores: dict[str, Any]) -> None:
    """After a validation: OUT/last always, OUT/best when `best_metric` improved."""
    metric = run.config.best_metric if run.config.best_metric == "val_loss" else f"val_{run.config.best_metric}"
    value = scores.get(metric)
    better = value is not None and (
        "score" not in run.best
        or (value < run.best["score"] if metric == "val_loss" else value > run.best["score"]))
    if better:
        run.best = {"score": value, "metric": metric, "step": step}
        _describe(run, step, scores)
        replace_dir(run.out / "best", lambda tmp: save(run.bundle, tmp))
    _save_last(run, step, scores)


def _save_last(run: _Run, step: int, scores: dict[str, Any]) -> None:
    """OUT/last: the model plus optimiser, scheduler, RNG state and the configuration (for resume)."""
    _describe(run, step, scores)
    info = {"step": step, "total_steps": run.total_steps, "config": asdict(run.config), "command": run.command,
            "n_train": run.data.summary.train, "best": run.best}

    def write(tmp: Path) -> None:
        save(run.bundle, tmp)
        save_state(tmp, run.optimizer, run.scheduler, info)

    replace_dir(run.out / "last", write)


def _describe(run: _Run, step: int, scores: dict[str, Any]) -> None:
    """The model's metadata: how it was trained (configuration, command, data) and its val scores."""
    config = run.config
    run.bundle.meta.training = {
        "config": asdict(config), "command": run.command, "data": run.data.summary.as_dict(),
        "step": step, "total_steps": run.total_steps, "device": str(run.device),
        "bf16": run.device.type == "cuda" and config.bf16, "torch_version": torch.__version__,
    }
    run.bundle.meta.scores = {"split": "val" if config.split != "all" else "all (= train)", "step": step,
                                 **scores}
    # What inference should use unless told otherwise: reports as long as the ones it learned.
    run.bundle.meta.generation = {"max_new_tokens": config.max_tokens}


