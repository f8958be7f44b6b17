"""A model's directory: save a bundle into one, load one back, and `info`, the facts `xrq model info` prints.

Above `bundle` (what a model is) and `card` (what it says about itself): both are imported here, neither
imports this module, so building a model never reaches for its files (see docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast, ViTImageProcessorPil

from model.errors import ModelError, ModelFormatError
from model.network import card, code
from model.network.bundle import Bundle, resolve_device, set_token_ids, without_progress_bars
from model.network.directory import HUB_PREFIX, META_FILE, check_complete, locate, read_json, read_meta
from model.network.meta import BundleMeta
from model.network.multiview import XrqEncoderDecoder


@without_progress_bars()
def save(bundle: Bundle, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the bundle as one directory: safetensors, configs, tokenizer, preprocessing, xrq.json, the
    modelling code that plain transformers loads with `trust_remote_code` (multiview.py, `auto_map`),
    and a model card (README.md).

    The bundle then points at it (`path`), and its meta records the fingerprint of what was saved and the
    sha256 of the modelling code (`load` refuses the directory once that code is edited).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file; give a directory to save the model into.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} is not empty; choose a new directory or pass overwrite (--force).")
    out.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(out, safe_serialization=True)  # with multiview.py: see its register_for_auto_class
    for weights in out.glob("*.safetensors"):  # written 0600; readable like the rest (shared volumes)
        shutil.copymode(out / "config.json", weights)
    bundle.tokenizer.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    meta = replace(bundle.meta, fingerprint=bundle.fingerprint, max_views=bundle.max_views, code=code.record(out))
    (out / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n")
    bundle.meta = meta
    bundle.path = out
    card.write_card(bundle, out)
    return out


@without_progress_bars()
def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> Bundle:
    """Load a saved bundle from a directory, or a hub id (`org/name`, or plainly `hf-hub:org/name`).

    Weights are read from safetensors only: pickled checkpoints are refused, never opened. A damaged
    directory (unreadable JSON, a cut-short weights file, a config that does not fit the weights) is
    refused with what to do, before or instead of a half-loaded model. No code of the directory ever runs
    (xrq's own modelling code builds the model), and a directory whose code is not what it was saved with
    is refused, naming the file (`model.network.code`).
    The model comes back in eval mode on `device` (default: cuda if available, else cpu).
    """
    dev = resolve_device(device)
    path = locate(name_or_path)
    check_complete(path)
    stored = read_meta(path)
    code.check(path, stored)
    meta = BundleMeta.from_dict(stored, where=str(path / META_FILE)) if stored is not None else BundleMeta()
    try:
        with _quiet_transformers():  # its load report goes to the log; ours is the error below
            loaded = XrqEncoderDecoder.from_pretrained(
                path, use_safetensors=True, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported as ours, below, instead of a RuntimeError
                trust_remote_code=False)  # nor custom_generate/: xrq's own multiview.py is what runs
        model, info = cast(tuple[XrqEncoderDecoder, dict[str, Any]], loaded)
        tok = cast(PreTrainedTokenizerFast, AutoTokenizer.from_pretrained(path, trust_remote_code=False))
        processor = ViTImageProcessorPil.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path} could not be loaded as an xrq model: {exc}") from exc
    _check_fits_weights(path, info)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    local = not str(name_or_path).startswith(HUB_PREFIX) and Path(name_or_path).expanduser().exists()
    if not local:
        meta.source = str(name_or_path)  # a hub id: its name, not the cache folder's
    if "max_views" not in read_json(path / "config.json"):  # saved before the config carried it
        model.config.max_views = meta.max_views
    set_token_ids(model, tok)
    cast(torch.nn.Module, model).to(dev).eval()
    return Bundle(model, processor, tok, meta, path if local else None)


def info(name_or_path: str | Path) -> dict[str, Any]:
    """`summary` of a saved model (loaded on the CPU), plus its files and whether plain transformers
    can load its multi-view code."""
    bundle = load(name_or_path, device="cpu")
    facts = card.summary(bundle)
    folder = bundle.path or Path(str(name_or_path))
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()} if folder.is_dir() else {}
    auto_map = getattr(bundle.model.config, "auto_map", None) or {}
    ours = code.packaged_digest()
    shipped = {name: {"sha256": digest, "xrq": digest == ours}
               for name, digest in code.check(folder, read_meta(folder)).items()} if folder.is_dir() else {}
    return {**facts, "path": str(folder), "files": files, "bytes": sum(files.values()), "code": shipped,
            "remote_code": card.REMOTE_CODE_FILE in files and "AutoModelForImageTextToText" in auto_map}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own log below errors while it loads (its load report would be printed to users)."""
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_fits_weights(path: Path, info: dict[str, Any]) -> None:
    """Refuse weights that config.json does not describe: missing, extra or differently sized tensors."""
    problems = [f"{len(info['missing_keys'])} tensors missing from the weights (e.g. {min(info['missing_keys'])})"
                if info["missing_keys"] else "",
                f"{len(info['unexpected_keys'])} tensors in the weights that the config has no place for "
                f"(e.g. {min(info['unexpected_keys'])})" if info["unexpected_keys"] else ""]
    mismatched = sorted(info["mismatched_keys"])
    if mismatched:
        name, stored, wanted = mismatched[0]
        problems.append(f"{len(mismatched)} tensors of other sizes (e.g. {name}: {tuple(stored)} in the weights, "
                        f"{tuple(wanted)} in the config)")
    found = [p for p in problems if p]
    if found:
        raise ModelFormatError(
            f"{path}/config.json does not describe the weights in its model.safetensors: {'; '.join(found)}. "
            "The config was edited or belongs to other weights: restore the config.json saved with these "
            "weights, or copy the whole model directory again.")
