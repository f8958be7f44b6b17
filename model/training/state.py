"""The resumable part of a checkpoint: optimiser, scheduler, step, random state. No pickle.

`torch.save` of an optimiser is a pickle, and loading a pickle can run code, which xrq never does
(docs/architecture.md, "Rules the tests hold"). So every tensor (AdamW's moments and step counts, the RNG
states) goes into `training_state.safetensors`, and everything else (parameter groups, scheduler counters, Python's
RNG, the training configuration) into `training_state.json`. Both load without executing anything.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.errors import TrainingError

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def save_state(folder: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any, info: dict[str, Any]) -> None:
    """Write optimiser, scheduler and RNG state, plus `info` (step, config...), into `folder`."""
    folder = Path(folder)
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                plain.setdefault(str(index), {})[name] = value
    tensors.update(_rng_tensors())
    save_file(tensors, str(folder / STATE_TENSORS))
    document = {
        **info,
        "optimizer": {"param_groups": opt["param_groups"], "state": plain},
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "python_random": random.getstate(),
    }
    (folder / STATE_JSON).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def read_info(folder: str | Path) -> dict[str, Any]:
    """The JSON half of a saved state (step, config, ...), without touching any optimiser."""
    return dict(json.loads((Path(folder) / STATE_JSON).read_text()))


def load_state(folder: str | Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore what `save_state` wrote into a freshly built optimiser and scheduler; return the JSON.

    The optimiser must have been built over the same parameters in the same order (the trainer
    always builds its groups from `named_parameters()`, so it is). RNG states are restored last.
    """
    folder = Path(folder)
    document = read_info(folder)
    tensors = load_file(str(folder / STATE_TENSORS))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, extra in document["optimizer"]["state"].items():
        state.setdefault(int(index), {}).update(extra)
    groups = document["optimizer"]["param_groups"]
    for group in groups:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**scheduler.state_dict(), **document["scheduler"]})
    _restore_rng(tensors, document["python_random"])
    return document


def _rng_tensors() -> dict[str, torch.Tensor]:
    """Every random state training draws from: torch CPU (dropout on CPU), each CUDA device, numpy."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = cuda_state
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    out["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    out["rng.numpy.rest"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    out["rng.numpy.gauss"] = torch.tensor([gauss], dtype=torch.float64)
    return out


def _restore_rng(tensors: dict[str, torch.Tensor], python_state: list[Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    pos, has_gauss = (int(v) for v in tensors["rng.numpy.rest"].tolist())
    keys = tensors["rng.numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(tensors["rng.numpy.gauss"][0])))
    version, internal, gauss_next = python_state
    random.setstate((version, tuple(internal), gauss_next))


# --- checkpoint folders and the metrics file -------------------------------------------------------


def replace_dir(final: Path, write: Any) -> None:
    """Write into a temporary sibling, then swap it in: a crash mid-save never leaves a half checkpoint."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def last_info(out: Path) -> dict[str, Any]:
    last = out / "last"
    for name in (last, last.with_name(".last.old")):  # a crash between the two renames leaves .last.old
        if (name / "training_state.json").is_file():
            if name != last:
                name.rename(last)
            return read_info(last)
    raise TrainingError(f"No checkpoint to resume in {out} (expected {last}); start a run with `xrq train`.")


def append_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_rows(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint: the resumed run logs those steps again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


# --- a run that has not reached its first checkpoint ------------------------------------------------

START_FILE = "run.json"  # the configuration a run started with, written before its first step


def write_start(out: Path, info: dict[str, Any]) -> None:
    """Record how the run in `out` started, so a run stopped before its first checkpoint can restart."""
    out.mkdir(parents=True, exist_ok=True)
    (out / START_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_start(out: Path) -> dict[str, Any] | None:
    """What `write_start` recorded in `out`, or None."""
    path = out / START_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path} is unreadable ({exc}); delete it to start the run in {out} again.") from exc


def has_checkpoint(out: Path) -> bool:
    return any((out / name / "training_state.json").is_file() for name in ("last", ".last.old"))


def clear_unstarted(out: Path, files: tuple[str, ...]) -> bool:
    """Remove what a run that never reached a checkpoint left in `out` (its metrics rows, its curves,
    its start record): nothing of it can be continued. True if there was such a run."""
    found = [out / name for name in (*files, START_FILE) if (out / name).exists()]
    for path in found:
        path.unlink()
    return bool(found)
