"""model.defaults: the numbers the CLI, the worker's settings and model/ share, readable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from model.defaults import DEFAULT_MAX_NEW_TOKENS, MAX_BEAMS, PRESET_NAMES, PRESETS, GenerationSettings
from model.errors import ModelError
from tests.conftest import REPO


def test_the_cli_and_settings_read_them_without_importing_torch() -> None:
    code = ("import sys, model.defaults, worker.settings, cli.models, cli.train; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stderr


def test_one_copy_each() -> None:
    """The worker's table, the CLI's choices and the model's limits are these very objects."""
    from cli.models import init
    from worker.settings import SETTINGS

    beams = next(row for row in SETTINGS if row.name == "num_beams")
    assert (beams.default, beams.maximum) == (GenerationSettings().num_beams, MAX_BEAMS)
    preset = next(p for p in init.params if p.name == "preset")
    assert tuple(preset.type.choices) == PRESET_NAMES == tuple(PRESETS)  # type: ignore[attr-defined]
    assert GenerationSettings().max_new_tokens == DEFAULT_MAX_NEW_TOKENS


def test_generation_settings_refuse_what_would_not_fit() -> None:
    GenerationSettings(num_beams=MAX_BEAMS)
    for bad in ({"num_beams": MAX_BEAMS + 1}, {"num_beams": 0}, {"max_new_tokens": 0}, {"no_repeat_ngram_size": -1}):
        with pytest.raises(ModelError):
            GenerationSettings(**bad)  # type: ignore[arg-type]
