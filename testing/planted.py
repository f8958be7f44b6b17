"""Remote code planted in a model directory, as an attacker would: every file transformers may read a class
name from (`auto_map`) points at a module of the directory that writes a marker file when imported.

Used by the tests of every command that loads a model, and by bench/faults.py. Loading such a directory
must never import the module: the marker file must never appear.
"""

from __future__ import annotations

import json
from pathlib import Path

MODULE = "planted"  # planted.py, beside the weights

_CODE = '''"""Planted by an attacker: importing this module is running their code."""
from pathlib import Path

Path({marker!r}).write_text("remote code ran")

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessor, ViTModel


class PlantedTokenizer(PreTrainedTokenizerFast):
    pass


class PlantedProcessor(ViTImageProcessor):
    pass


class PlantedConfig(ViTConfig):
    model_type = "planted"


class PlantedModel(ViTModel):
    config_class = PlantedConfig
'''

_GENERATE = '''from pathlib import Path

Path({marker!r}).write_text("remote code ran")


def generate(model, *args, **kwargs):
    return model.generate(*args, **kwargs)
'''


def _edit(file: Path, change: dict[str, object]) -> None:
    data = json.loads(file.read_text()) if file.is_file() else {}
    data.update(change)
    file.write_text(json.dumps(data, indent=2))


def plant(folder: Path, marker: Path) -> Path:
    """Plant remote code in every loadable file of `folder` (an xrq model directory, or a pretrained
    part: a ViT, a GPT-2, a tokenizer); returns the planted module's path."""
    code = folder / f"{MODULE}.py"
    code.write_text(_CODE.format(marker=str(marker)))
    (folder / "custom_generate").mkdir(exist_ok=True)
    (folder / "custom_generate" / "generate.py").write_text(_GENERATE.format(marker=str(marker)))
    classes = {"AutoConfig": f"{MODULE}.PlantedConfig", "AutoModel": f"{MODULE}.PlantedModel",
               "AutoModelForCausalLM": f"{MODULE}.PlantedModel",
               "AutoModelForImageTextToText": f"{MODULE}.PlantedModel",
               "AutoTokenizer": [None, f"{MODULE}.PlantedTokenizer"],
               "AutoImageProcessor": f"{MODULE}.PlantedProcessor"}
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text())
        # A part of unknown type: only its own code could build it (an xrq model keeps its type: xrq checks it).
        change: dict[str, object] = {"auto_map": classes}
        if config.get("model_type") != "vision-encoder-decoder":
            change["model_type"] = "planted"
        _edit(folder / "config.json", change)
    # A tokenizer class transformers does not know, so that only the planted one could be it.
    _edit(folder / "tokenizer_config.json", {"auto_map": {"AutoTokenizer": [None, f"{MODULE}.PlantedTokenizer"]},
                                            "tokenizer_class": "PlantedTokenizer"})
    _edit(folder / "preprocessor_config.json", {"auto_map": {"AutoImageProcessor": f"{MODULE}.PlantedProcessor"},
                                                "image_processor_type": "PlantedProcessor"})
    _edit(folder / "generation_config.json", {"auto_map": {"AutoConfig": f"{MODULE}.PlantedConfig"}})
    return code


def pretrained_parts(folder: Path) -> tuple[Path, Path]:
    """A tiny pretrained ViT and GPT-2 (with its own tokenizer) saved as someone else's parts: (encoder, decoder)."""
    from testing.parts import tiny_parts

    encoder, decoder = tiny_parts(folder, with_tokenizer=True)
    return Path(encoder), Path(decoder)
