"""Finding a model directory and checking it is a whole, readable xrq model before anything loads it.

Every check names the file at fault and what to do, so a damaged or mistyped model becomes one
`Error: ...` line instead of a traceback from deep inside transformers or safetensors.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
from pathlib import Path
from typing import Any

from model.errors import ModelFormatError, ModelNotFoundError

META_FILE = "xrq.json"
HUB_PREFIX = "hf-hub:"  # says "this is a hub id" plainly (the open_clip spelling)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
NOT_FOUND_HINT = "Create one with `xrq model init --out DIR`, or pass --model with a model directory."
_RESAVE = "Copy the model directory again from where it came from, or save it again with xrq."


def locate(name_or_path: str | Path) -> Path:
    """An existing directory as is; a hub id (`org/name`, `hf-hub:org/name`) fetched (json/safetensors only).

    A name that looks like a path on this machine (it starts with `.`, `/` or `~`, or its first
    folder exists here, as `models/` in `models/dmeo`) is a mistyped directory, never a hub id.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, str) and text.startswith(HUB_PREFIX):
        return _download(text[len(HUB_PREFIX):], text)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFormatError(f"{path} is a file; an xrq model is a directory (see `xrq model init`).")
        return path
    if isinstance(name_or_path, Path) or not _HUB_ID.match(text) or _looks_local(text):
        raise ModelNotFoundError(f"No such directory: {path}.{_did_you_mean(path)} {NOT_FOUND_HINT}")
    return _download(text, text)


def precheck(name_or_path: str) -> None:
    """What can be checked of a model name without a download and without torch: a mistyped, missing,
    or incomplete directory is refused here, before the seconds torch and transformers take to import.
    A hub id passes (it is fetched, and checked, when the model is loaded)."""
    text = str(name_or_path)
    if text.startswith(HUB_PREFIX):
        return
    if Path(text).expanduser().exists() or not _HUB_ID.match(text) or _looks_local(text):
        check_complete(locate(text))


def _looks_local(text: str) -> bool:
    first = text.split("/", 1)[0]
    return text.startswith((".", "/", "~")) or ("/" in text and Path(first).is_dir())


def _did_you_mean(path: Path) -> str:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return ""
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1)
    return f" Did you mean {parent / close[0]}?" if close else ""


def _download(repo_id: str, asked: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    try:
        with disable_progress_bars():  # for this download only; xrq shows its own progress
            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"]))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{asked!r} is neither a directory nor a reachable hub model ({type(exc).__name__}). {NOT_FOUND_HINT}"
        ) from exc


def check_complete(path: Path) -> None:
    """Refuse a directory that is not a whole, readable model, naming what is missing or damaged."""
    index = path / "model.safetensors.index.json"
    has_weights = (path / "model.safetensors").is_file() or index.is_file()
    if not has_weights and any(path.glob("pytorch_model*.bin")):
        raise ModelFormatError(
            f"{path} holds only pickled weights (pytorch_model.bin), which xrq never loads because "
            "unpickling can run code. Convert them to model.safetensors with a trusted tool first."
        )
    missing = [] if has_weights else ["model.safetensors (weights)"]
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        missing.append("tokenizer.json (tokenizer)")
    if not (path / "preprocessor_config.json").is_file():
        missing.append("preprocessor_config.json (image preprocessing)")
    if missing:
        raise ModelFormatError(f"{path} is not a complete xrq model; missing: {', '.join(missing)}. "
                               "Save one with `xrq model init --out DIR`.")
    model_type = read_json(path / "config.json").get("model_type")
    if model_type != "vision-encoder-decoder":
        raise ModelFormatError(
            f"{path}/config.json describes a {model_type!r} model, not a vision-encoder-decoder. {_RESAVE}"
        )
    read_json(path / "preprocessor_config.json")
    if (path / META_FILE).is_file():
        read_json(path / META_FILE)
    shards = sorted(set(read_json(index).get("weight_map", {}).values())) if index.is_file() else []
    for name in shards or ["model.safetensors"]:
        check_safetensors(path / name)


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`, or a ModelFormatError that names the file and the fault."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{file} is not valid JSON ({exc}). {_RESAVE}") from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{file} holds a JSON {type(data).__name__}, not an object. {_RESAVE}")
    return data


def read_meta(path: Path) -> dict[str, Any] | None:
    """xrq's metadata (xrq.json), or None for a model saved by something else."""
    file = path / META_FILE
    return read_json(file) if file.is_file() else None


def check_safetensors(file: Path) -> None:
    """Refuse a missing, truncated or garbled safetensors file from its header alone (nothing is loaded).

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the data: the file must be exactly as long as the header says.
    """
    if not file.is_file():
        raise ModelFormatError(f"{file} is missing (named in model.safetensors.index.json). {_RESAVE}")
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(file, f"it is {size} bytes long, too short to hold any weights")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise _damaged(file, f"its header says {length} bytes of description but the file has {size}")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _damaged(file, "its header is not readable") from None
    if not isinstance(header, dict):
        raise _damaged(file, "its header is not readable")
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise _damaged(file, f"it is {size:,} bytes long but its header describes {expected:,}")


def _damaged(file: Path, why: str) -> ModelFormatError:
    return ModelFormatError(f"{file} is damaged or cut short: {why}. {_RESAVE}")
