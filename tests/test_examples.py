"""examples/transformers_report.py runs as written, gives xrq's own report, and is what README.md quotes."""

from __future__ import annotations

import os
import subprocess
import sys

from model.imaging.images import decode
from model.inference.generate import GenerationSettings, generate
from model.network.store import load
from tests.conftest import EXAMPLES, REPO

SCRIPT = REPO / "examples" / "transformers_report.py"


def test_the_transformers_example_runs_and_gives_xrqs_report() -> None:
    files = [EXAMPLES / "CXR7_IM-2263-1001.png", EXAMPLES / "CXR7_IM-2263-2001.png"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}  # plain transformers: no xrq on the path
    done = subprocess.run([sys.executable, str(SCRIPT), str(REPO / "models" / "demo"), *map(str, files)],
                          capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert done.returncode == 0, done.stderr
    ours = generate(load(REPO / "models" / "demo", device="cpu"), [[decode(f) for f in files]],
                    GenerationSettings(max_new_tokens=128))
    assert done.stdout.strip() == ours[0].strip() and len(ours[0]) > 20


def test_the_readme_quotes_the_example() -> None:
    quoted = SCRIPT.read_text().split("# --- quoted in README.md from here ---\n")[1].split("# --- to here ---")[0]
    readme = (REPO / "README.md").read_text()
    assert quoted in readme and "examples/transformers_report.py" in readme
