"""The Python code a model directory ships, hashed at save and checked before anything loads the directory.

xrq never runs that code: it builds the model from its own `model/network/multiview.py`, imported from the
package. The copy beside the weights is for plain transformers (`trust_remote_code=True`), and whoever runs
it trusts the directory. So the directory must hold exactly the code it was saved with: `xrq.json` records
the sha256 of each file (`multiview.py`, and any module an `auto_map` names), and a directory whose code
differs, or that holds Python files it was not saved with, is refused, naming the file.

A directory saved before the hashes were recorded is held to this xrq's own `multiview.py`.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

from model.errors import ModelFormatError
from model.network.directory import read_json

CODE_KEY = "code"  # in xrq.json: {file name: sha256 hex}
CODE_FILE = "multiview.py"  # what save_pretrained copies from model/network/multiview.py
_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json")
_FIX = ("Copy the model directory again from where it came from, or replace the file with xrq's own "
        "model/network/multiview.py (xrq never runs it; plain transformers would) and remove any other .py file")


def sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def packaged_digest() -> str:
    """The sha256 of this xrq's own modelling code (model/network/multiview.py)."""
    return hashlib.sha256((resources.files("model.network") / CODE_FILE).read_bytes()).hexdigest()


def named_modules(folder: Path) -> set[str]:
    """The files of `folder` that its configs' `auto_map`s name (`multiview.XrqEncoderDecoder` -> multiview.py)."""
    names: set[str] = set()
    for config in _CONFIGS:
        file = folder / config
        if not file.is_file():
            continue
        auto_map = read_json(file).get("auto_map") or {}
        refs = auto_map.values() if isinstance(auto_map, dict) else auto_map
        for ref in refs:
            for one in ref if isinstance(ref, list) else [ref]:
                if isinstance(one, str) and "." in one:
                    names.add(one.split("--")[-1].rsplit(".", 1)[0].replace(".", "/") + ".py")
    return names


def record(folder: Path) -> dict[str, str]:
    """At save: the sha256 of the modelling code just written (multiview.py and what the auto_maps name)."""
    names = {CODE_FILE} | named_modules(folder)
    return {name: sha256(folder / name) for name in sorted(names) if (folder / name).is_file()}


def python_files(folder: Path) -> dict[str, Path]:
    """Every Python file in the directory, by its path relative to it (what transformers could import)."""
    return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*.py"))
            if "__pycache__" not in f.parts and f.is_file()}


def check(folder: Path, meta: dict[str, Any] | None) -> dict[str, str]:
    """Refuse a directory whose code is not what it was saved with; returns the verified {file: sha256}.

    A recorded file that is absent is fine (a hub download leaves the code out; nothing runs it then).
    """
    recorded = (meta or {}).get(CODE_KEY)
    if recorded is not None and not (isinstance(recorded, dict) and
                                     all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items())):
        raise ModelFormatError(f"{folder}/xrq.json: its \"{CODE_KEY}\" is not a map of file names to sha256 "
                               f"hashes. {_FIX}.")
    present = {name: sha256(file) for name, file in python_files(folder).items()}
    for name, digest in present.items():
        if recorded is None:
            if name != CODE_FILE:
                raise ModelFormatError(f"{folder / name} is Python code that xrq does not know (this model's "
                                       f"xrq.json records no modelling code). {_FIX}.")
            if digest != packaged_digest():
                raise ModelFormatError(
                    f"{folder / name} differs from xrq's modelling code, and this model was saved before xrq "
                    f"recorded the hash of its code (xrq.json has no \"{CODE_KEY}\"), so it cannot be told "
                    f"from an edit. {_FIX}.")
        elif name not in recorded:
            raise ModelFormatError(f"{folder / name} is Python code that was not saved with this model "
                                   f"(xrq.json records {', '.join(sorted(recorded)) or 'none'}). {_FIX}.")
        elif digest != recorded[name]:
            raise ModelFormatError(
                f"{folder / name} differs from the modelling code saved with this model (sha256 "
                f"{recorded[name][:12]}… recorded in xrq.json, {digest[:12]}… now): it was edited. {_FIX}.")
    return present
