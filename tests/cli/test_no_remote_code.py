"""No code from a model directory, ever: every command that loads a model, fed "y" on standard input
(transformers' "Do you wish to run the custom code? [y/N]"), with remote code planted in every file
transformers reads a class name from. The planted module writes a marker file when imported: it must never
appear, and the command must fail with one `Error:` line or load the model as xrq's own code.
"""

from __future__ import annotations

import ast
import io
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from testing.planted import plant
from tests.conftest import EXAMPLES, IU_CSV, REPO
from tests.model.test_bundle import _parts

YES = "y\ny\ny\ny\n"  # one "y" per prompt transformers might show


def xrq(*args: str, db: Path) -> Result:
    return CliRunner().invoke(cli, ["--database-url", f"sqlite:///{db}", *args], input=YES)


def refused_or_ignored(result: Result, marker: Path) -> None:
    assert not marker.exists(), "the planted code ran"
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError | OSError), result.output
    if result.exit_code:
        assert result.output.startswith("Error: ") and result.exit_code == 1, result.output


@pytest.fixture
def planted_model(tmp_path: Path, tiny_model: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "CXR25_IM-1024-2001.png", folder)
    return folder


def test_model_info_and_submit_never_run_planted_code(tmp_path: Path, planted_model: Path, images: Path) -> None:
    marker = tmp_path / "MARKER"
    plant(planted_model, marker)
    refused_or_ignored(xrq("model", "info", str(planted_model), db=tmp_path / "x.db"), marker)
    submitted = xrq("submit", str(images), "--model", str(planted_model), "--max-new-tokens", "2", db=tmp_path / "x.db")
    refused_or_ignored(submitted, marker)


def test_train_init_and_resume_never_run_planted_code(tmp_path: Path, planted_model: Path) -> None:
    marker = tmp_path / "MARKER"
    data = ["--reports", str(IU_CSV / "indiana_reports.csv"), "--projections",
            str(IU_CSV / "indiana_projections.csv"), "--images", str(EXAMPLES), "--split", "all", "--max-steps", "2",
            "--batch-size", "9", "--eval-every", "2", "--max-tokens", "8"]
    run = tmp_path / "run"
    first = xrq("train", *data, "--out", str(run), "--tokenizer", "train", "--stop-after", "1", db=tmp_path / "x.db")
    assert first.exit_code == 0, first.output
    plant(run / "last", marker)
    refused_or_ignored(xrq("train", "--out", str(run), "--resume", db=tmp_path / "x.db"), marker)
    plant(planted_model, marker)
    init = xrq("train", *data, "--out", str(tmp_path / "from"), "--init", str(planted_model), db=tmp_path / "x.db")
    refused_or_ignored(init, marker)


def test_pretrained_parts_never_run_planted_code(tmp_path: Path) -> None:
    """`xrq model init` (and `xrq train`) from an encoder, a decoder and a tokenizer of someone else's."""
    marker = tmp_path / "MARKER"
    encoder, decoder = _parts(tmp_path, with_tokenizer=True)
    clean_encoder, clean_decoder = _parts(tmp_path / "clean", with_tokenizer=True)
    for part in (encoder, decoder):
        plant(Path(part), marker)
    for args in (["--encoder", encoder, "--decoder", clean_decoder], ["--encoder", clean_encoder, "--decoder", decoder],
                 ["--tokenizer", decoder]):
        result = xrq("model", "init", "--out", str(tmp_path / "out"), "--force", *args, db=tmp_path / "x.db")
        refused_or_ignored(result, marker)
        assert result.exit_code == 1 and "xrq never runs code from a model directory" in result.output, result.output


def test_the_workers_load_path_never_runs_planted_code(
    tmp_path: Path, planted_model: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job recorded with a clean model, whose directory (the recorded path) is then tampered with:
    the worker's task body loads it from there, and `xrq show` and `xrq evaluate` read the job."""
    from worker import runtime
    from worker.settings import Settings
    from worker.tasks import run_batch

    marker, db = tmp_path / "MARKER", tmp_path / "x.db"
    done = xrq("submit", str(images), "--model", str(planted_model), "--max-new-tokens", "2", db=db)
    assert done.exit_code == 0, done.output
    plant(planted_model, marker)
    runtime.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO(YES))
    settings = Settings.from_env({}, database_url=f"sqlite:///{db}")
    try:
        run_batch(settings, 1, [1])
    except Exception as exc:  # refused: with a named error, never by transformers' own
        assert type(exc).__module__.split(".")[0] in ("model", "worker"), repr(exc)
    assert not marker.exists()
    refused_or_ignored(xrq("show", "25", "-o", str(tmp_path / "s.png"), db=db), marker)
    refused_or_ignored(xrq("evaluate", "--job", "1", db=db), marker)
    refused_or_ignored(xrq("backlog", db=db), marker)


LOADERS = {"from_pretrained"}


def test_every_transformers_load_says_no_remote_code() -> None:
    """Every `from_pretrained` call in xrq's code passes `trust_remote_code=False` itself, so no default of a
    transformers version (or a prompt) decides whether a directory's code runs."""
    missing = []
    for folder in ("model", "worker", "cli", "db", "web", "interop", "bench", "testing"):
        for file in sorted((REPO / folder).rglob("*.py")):
            if file.name == "multiview.py":  # the modelling code itself loads nothing
                continue
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOADERS:
                    flag = next((k.value for k in node.keywords if k.arg == "trust_remote_code"), None)
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        missing.append(f"{file.relative_to(REPO)}:{node.lineno}")
    assert missing == []
