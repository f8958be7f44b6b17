"""The modelling code a model directory ships is what it was saved with, or the directory is refused.

xrq never runs that code (tests/cli/test_no_remote_code.py), but plain transformers does, and `xrq model
info` tells users to run it: an edited `multiview.py` must not pass for the model xrq saved.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from model.errors import ModelFormatError
from model.network import code
from model.network.store import info, load
from tests.conftest import EXAMPLES, REPO


def sha(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path, tiny_model: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


def drop_recorded_code(folder: Path) -> None:
    """What a model saved before xrq recorded its code looks like."""
    meta = json.loads((folder / "xrq.json").read_text())
    del meta["code"]
    (folder / "xrq.json").write_text(json.dumps(meta))


def test_save_records_the_hash_of_the_modelling_code(tiny_model: Path) -> None:
    meta = json.loads((tiny_model / "xrq.json").read_text())
    assert meta["code"] == {"multiview.py": sha(REPO / "model" / "network" / "multiview.py")}
    facts = info(tiny_model)
    assert facts["code"] == {"multiview.py": {"sha256": meta["code"]["multiview.py"], "xrq": True}}


def test_an_edited_multiview_is_refused_by_model_info_and_submit(model_dir: Path, tmp_path: Path) -> None:
    with (model_dir / "multiview.py").open("a") as f:
        f.write("\nimport os; os.system('echo pwned')\n")
    runner = CliRunner()
    shown = runner.invoke(cli, ["model", "info", str(model_dir)])
    assert shown.exit_code == 1
    assert shown.output.startswith(f"Error: {model_dir / 'multiview.py'} differs from the modelling code saved "
                                   "with this model (sha256 ")
    assert "trust_remote_code=True" not in shown.output
    submitted = runner.invoke(cli, ["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "submit", str(EXAMPLES),
                                    "--model", str(model_dir)])
    assert submitted.exit_code == 1 and "multiview.py differs from the modelling code saved" in submitted.output
    assert not (tmp_path / "x.db").exists() or "Job" not in submitted.output


@pytest.mark.parametrize("name", ["planted.py", "custom_generate/generate.py", "sub/helper.py"])
def test_python_the_model_was_not_saved_with_is_refused(model_dir: Path, name: str) -> None:
    (model_dir / name).parent.mkdir(exist_ok=True)
    (model_dir / name).write_text("print('hello')\n")
    with pytest.raises(ModelFormatError, match=f"{model_dir / name} is Python code that was not saved with this "
                                               r"model \(xrq.json records multiview.py\)"):
        load(model_dir, device="cpu")


def test_an_edited_record_is_refused(model_dir: Path) -> None:
    meta = json.loads((model_dir / "xrq.json").read_text())
    meta["code"] = "anything"
    (model_dir / "xrq.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r'xrq\.json: its "code" is not a map'):
        load(model_dir, device="cpu")


def test_a_model_saved_before_the_hash_is_held_to_xrqs_own_code(model_dir: Path) -> None:
    drop_recorded_code(model_dir)
    assert load(model_dir, device="cpu").meta.code == {}  # this xrq's multiview.py: loads
    with (model_dir / "multiview.py").open("a") as f:
        f.write("# edited\n")
    with pytest.raises(ModelFormatError, match="differs from xrq's modelling code, and this model was saved before "
                                               "xrq recorded the hash of its code"):
        load(model_dir, device="cpu")
    shutil.copy(REPO / "model" / "network" / "multiview.py", model_dir / "multiview.py")  # the fix it names
    (model_dir / "other.py").write_text("")
    with pytest.raises(ModelFormatError, match=r"other\.py is Python code that xrq does not know"):
        load(model_dir, device="cpu")


def test_a_copy_without_its_code_loads(model_dir: Path) -> None:
    """A hub download leaves the .py files out (json and safetensors only): nothing could run them."""
    (model_dir / "multiview.py").unlink()
    assert load(model_dir, device="cpu").meta.code["multiview.py"]
    assert info(model_dir)["remote_code"] is False


def test_record_covers_every_module_an_auto_map_names(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "configuration.XrqConfig"
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "configuration.py").write_text("X = 1\n")
    assert code.record(model_dir) == {"configuration.py": sha(model_dir / "configuration.py"),
                                      "multiview.py": sha(model_dir / "multiview.py")}


def test_the_demo_records_its_code() -> None:
    """After copying model/network/multiview.py to models/demo, record its hash in models/demo/xrq.json too."""
    demo = REPO / "models" / "demo"
    meta = json.loads((demo / "xrq.json").read_text())
    assert meta["code"] == {"multiview.py": sha(demo / "multiview.py")} == code.record(demo)
    assert info(demo)["code"]["multiview.py"]["xrq"] is True
