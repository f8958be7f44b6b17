"""Cheap commands stay cheap (docs/architecture.md): help and database reads never import the heavy libraries.

Each case runs `xrq ARGS` in a fresh interpreter (against a fresh SQLite file, no broker) and reads
back which top-level modules it imported. torch, transformers, matplotlib and pandas each cost
seconds to import; they belong inside the functions that generate, train, draw or export.
Every command's --help is found from the click group, so a new command is covered the day it is added.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from cli.main import cli
from tests.conftest import REPO

HEAVY = ("torch", "transformers", "matplotlib", "pandas")

# Runs one command the way the `xrq` script does (click's standalone mode, exit status included),
# then writes the exit status and the top-level modules it imported to the file named first.
CHILD = """
import json, sys
from cli.main import cli
code = 0
try:
    cli.main(args=sys.argv[2:], prog_name="xrq")
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
with open(sys.argv[1], "w") as f:
    json.dump({"exit": code, "modules": sorted({m.partition(".")[0] for m in sys.modules})}, f)
"""


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand under `group`, as the words that name it."""
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found += command_paths(command, (*prefix, name))
    return found


CASES = [
    ("--help",),
    *[(*path, "--help") for path in command_paths(cli)],
    ("status",),
    ("reports",),
    ("backlog", "--dry-run"),
]


def run_cold(args: tuple[str, ...], folder: Path) -> dict[str, Any]:
    """`xrq ARGS` in a new interpreter; its exit status, output and imported top-level modules."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRQ_")}
    env.update(XRQ_DATABASE_URL=f"sqlite:///{folder / 'xrq.db'}", PYTHONPATH=str(REPO))
    result_file = folder / "modules.json"
    done = subprocess.run([sys.executable, "-c", CHILD, str(result_file), *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)
    found = json.loads(result_file.read_text()) if result_file.exists() else {"exit": done.returncode, "modules": []}
    return {**found, "output": done.stdout + done.stderr}


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_cheap_commands_import_no_heavy_library(args: tuple[str, ...], tmp_path: Path) -> None:
    result = run_cold(args, tmp_path)
    assert result["exit"] == 0, result["output"]
    imported = set(result["modules"])
    assert "cli" in imported  # the probe works: it sees what the command imported
    assert not imported & set(HEAVY), f"xrq {' '.join(args)} imported {sorted(imported & set(HEAVY))}"


def test_cases_cover_show_help_and_every_documented_command() -> None:
    """Checked against what the CASES are not built from: the commands docs/cli.md documents (a command
    added without its docs, or a group whose subcommands the walk misses, fails here)."""
    headings = re.findall(r"^## .*$", (REPO / "docs" / "cli.md").read_text(), flags=re.M)
    documented = {name for heading in headings for name in re.findall(r"`xrq (\w+)", heading)}
    covered = {path[0] for path in CASES if path[-1] == "--help" and len(path) > 1}
    assert covered == documented
    assert {("show", "--help"), ("model", "init", "--help"), ("model", "info", "--help"),
            ("truth", "import", "--help"), ("db", "upgrade", "--help"), ("db", "current", "--help")} <= set(CASES)


def test_the_probe_catches_a_heavy_import(tmp_path: Path) -> None:
    """A probe that could never fail proves nothing: a command that does load a model (torch and
    transformers) is seen doing it."""
    result = run_cold(("model", "info", str(REPO / "models" / "demo")), tmp_path)
    assert result["exit"] == 0, result["output"]
    assert {"torch", "transformers"} <= set(result["modules"]), result["output"]


@pytest.mark.parametrize("model", ["models/dmeo", "{tmp}/modles/tiny", "{tmp}/empty"])
def test_a_mistyped_or_empty_model_is_named_before_torch_is_imported(model: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "models" / "demo").mkdir(parents=True)  # so that models/dmeo looks like a path here
    result = run_cold(("submit", str(tmp_path / "images"), "--model", model.format(tmp=tmp_path)), tmp_path)
    assert result["exit"] == 1 and result["output"].startswith("Error: "), result["output"]
    assert not set(result["modules"]) & set(HEAVY), result["output"]
