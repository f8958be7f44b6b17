"""Importing xrq changes no global state: transformers' progress bars, logging filters and matplotlib's
backend are set where they are needed (around a load, a generate call, a figure), never at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_architecture import MODULES

PROBE = """
import importlib, json, logging, sys
import matplotlib
import transformers

def state():
    loggers = [logging.getLogger()] + [l for l in logging.Logger.manager.loggerDict.values()
                                       if isinstance(l, logging.Logger)]
    return {"progress_bars": transformers.utils.logging.is_progress_bar_enabled(),
            "filters": sorted(f"{l.name}: {type(f).__name__}" for l in loggers for f in l.filters),
            "backend": matplotlib.rcParams._get_backend_or_none(), "pyplot": "matplotlib.pyplot" in sys.modules}

before = state()
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps({"before": before, "after": state()}))
"""


def test_importing_every_module_changes_nothing() -> None:
    names = sorted(m for m in MODULES if not m.endswith(("migrations.env", "cli.__main__")))
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names)], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                              "MPLBACKEND": ""}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["after"] == seen["before"], seen
    assert seen["before"]["progress_bars"] and not seen["after"]["pyplot"]


def test_a_load_or_save_turns_progress_bars_off_only_while_it_runs(tiny_model: Path, tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    import transformers

    from model.network.store import load, save

    assert transformers.utils.logging.is_progress_bar_enabled()
    save(load(str(tiny_model), device="cpu"), tmp_path / "copy")
    assert transformers.utils.logging.is_progress_bar_enabled()
    assert capfd.readouterr().err == ""  # no "Loading weights" or "Writing model shards" bars
