"""A saved xrq model in plain transformers: `AutoModelForImageTextToText(..., trust_remote_code=True)` with
the modelling code saved beside the weights writes xrq's reports for multi-view studies.

The plain side runs in a subprocess that never imports xrq (checked), from a folder outside the repository.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.imaging.images import decode
from model.imaging.preprocess import pixel_values
from model.inference.engine import Engine
from model.inference.generate import GenerationSettings, decode_reports, generate_ids
from model.network.bundle import build
from model.network.store import load, save
from tests.conftest import EXAMPLES, REPO

STUDIES = {  # a 3-view study and a 1-view study: batched together, the second has two padded views
    "1000": ["1000_IM-0003-1001.dcm.png", "1000_IM-0003-2001.dcm.png", "1000_IM-0003-3001.dcm.png"],
    "25": ["CXR25_IM-1024-2001.png"],
}
SEARCHES = {"greedy": GenerationSettings(max_new_tokens=20),
            "beam": GenerationSettings(num_beams=3, max_new_tokens=20)}
XRQ_PACKAGES = ("model", "cli", "worker", "db")

# Run by a plain Python: the card's own snippet for one study, then a padded batch of both studies.
PLAIN = """
import json, sys
import torch
# argv: the model directory, the studies' files (JSON), the card's snippet (JSON)
path, studies = sys.argv[1], json.loads(sys.argv[2])
out = {}
snippet = json.loads(sys.argv[3])
for uid, files in studies.items():
    code = snippet.replace('path = "path/to/this/model"', f"path = {path!r}")
    code = code.replace('files = ["frontal.png", "lateral.png"]', f"files = {files!r}")
    code = code.replace("print(", "out['card ' + uid] = (")
    exec(code)
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(path)
views = [[processor(images=[Image.open(f).convert("L").convert("RGB")], return_tensors="pt")["pixel_values"][0]
          for f in files] for files in studies.values()]
most = max(map(len, views))
pixels = torch.zeros(len(views), most, *views[0][0].shape)  # (B, V, 3, H, W), padded views zero
mask = torch.zeros(len(views), most, dtype=torch.bool)  # (B, V)
for i, study in enumerate(views):
    pixels[i, : len(study)] = torch.stack(study)
    mask[i, : len(study)] = True
for name, beams in (("greedy", 1), ("beam", 3)):
    with torch.inference_mode():
        ids = model.generate(pixel_values=pixels, attention_mask=mask, num_beams=beams, max_new_tokens=20)
    out[name] = ids.tolist()
out["class"] = type(model).__module__ + "." + type(model).__name__
out["xrq_imported"] = [m for m in XRQ_PACKAGES if m in sys.modules]
print(json.dumps(out))
""".replace("XRQ_PACKAGES", repr(XRQ_PACKAGES))


def _plain_python(script: str, args: list[str], cwd: Path, modules: Path) -> str:
    """Run `script` in a fresh interpreter that cannot see the repository on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(modules), OMP_NUM_THREADS="1", TRANSFORMERS_OFFLINE="1")
    guard = f"import sys; sys.path = [p for p in sys.path if p not in ('', {str(REPO)!r})]\n"
    done = subprocess.run([sys.executable, "-c", guard + script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _card_snippet(model_dir: Path) -> str:
    card = (model_dir / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def test_plain_transformers_writes_xrqs_reports(tmp_path: Path) -> None:
    bundle = build("tiny", seed=0, max_views=3)
    model_dir = save(bundle, tmp_path / "xrq-tiny")
    files = {uid: [str(EXAMPLES / n) for n in names] for uid, names in STUDIES.items()}
    out = json.loads(_plain_python(PLAIN, [str(model_dir), json.dumps(files), json.dumps(_card_snippet(model_dir))],
                                   tmp_path, tmp_path / "modules"))
    assert out["xrq_imported"] == [] and out["class"].endswith("multiview.XrqEncoderDecoder")
    assert out["class"].startswith("transformers_modules.")  # the saved copy, not xrq's module

    engine = Engine(load(model_dir, device="cpu"))
    studies = [[decode(f) for f in names] for names in files.values()]
    pixels, mask = pixel_values(engine.bundle.processor, studies, engine.bundle.max_views)  # (2, 3, 3, H, W)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    for name, settings in SEARCHES.items():
        with torch.inference_mode():
            ids = generate_ids(engine.bundle.model, pixels, mask, settings)
        assert out[name] == ids.tolist(), name  # the very tokens, padded batch and all
        reports = engine.generate(pixels, mask, settings)
        assert decode_reports(engine.bundle.tokenizer, torch.tensor(out[name])) == reports
    # The card's snippet (one study at a time, as a reader would run it) gives xrq's report for each study.
    alone = GenerationSettings(max_new_tokens=60)
    for uid, study in zip(files, studies, strict=True):
        one, one_mask = pixel_values(engine.bundle.processor, [study], engine.bundle.max_views)
        assert out[f"card {uid}"] == engine.generate(one, one_mask, alone)[0]


def test_the_shipped_demo_runs_in_plain_transformers(tmp_path: Path) -> None:
    """The demo card's snippet, as printed there, writes study 7's memorised findings (two views)."""
    snippet = _card_snippet(REPO / "models" / "demo")
    printed = _plain_python(snippet, [], REPO, tmp_path / "modules").strip()
    demo = load(REPO / "models" / "demo", device="cpu")
    study = [decode(EXAMPLES / "CXR7_IM-2263-1001.png"), decode(EXAMPLES / "CXR7_IM-2263-2001.png")]
    pixels, mask = pixel_values(demo.processor, [study], demo.max_views)
    assert printed == Engine(demo).generate(pixels, mask, GenerationSettings(max_new_tokens=128))[0]
    assert printed.startswith("The cardiac contours are normal.")


def test_saved_model_carries_the_modelling_code(tiny_model: Path) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForImageTextToText": "multiview.XrqEncoderDecoder",
                                  "AutoConfig": "multiview.XrqEncoderDecoderConfig"}
    assert config["max_views"] == load(tiny_model, device="cpu").max_views  # plain transformers sees it too
    assert (tiny_model / "multiview.py").read_text() == (REPO / "model" / "network" / "multiview.py").read_text()


@pytest.mark.parametrize("source", ["model/network/multiview.py", "models/demo/multiview.py"])
def test_modelling_code_stands_alone(source: str) -> None:
    """It runs without xrq: only torch, transformers and the standard library may be imported."""
    tree = ast.parse((REPO / source).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "typing", "torch", "transformers"}, imported


def test_the_demo_ships_the_modelling_code_byte_for_byte() -> None:
    """models/demo/multiview.py is what plain transformers runs for the demo model: the tree's own code, unchanged.

    After a change to model/network/multiview.py, copy it there (the weights do not change with the code) and
    record its sha256 in models/demo/xrq.json ("code"), which every load checks (tests/model/test_model_code.py).
    """
    demo = json.loads((REPO / "models" / "demo" / "config.json").read_text())
    names = {auto: ref.partition(".") for auto, ref in demo["auto_map"].items()}
    assert {auto: name for auto, (_, _, name) in names.items()} == {
        "AutoModelForImageTextToText": "XrqEncoderDecoder", "AutoConfig": "XrqEncoderDecoderConfig"}
    for module, _, name in names.values():  # each name the auto_map gives is defined in the file it names
        shipped = (REPO / "models" / "demo" / f"{module}.py").read_bytes()
        assert shipped == (REPO / "model" / "network" / "multiview.py").read_bytes()
        assert f"class {name}(".encode() in shipped
