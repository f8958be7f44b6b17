"""The small-v2 preset's multi-view join (which view, where in it) and `xrq train --augment` (never a flip).

Older models keep their join exactly (no `view_join` in their config, no new weights) and older runs
resume; a small-v2 model writes the same tokens in plain transformers (`trust_remote_code`) as in xrq.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from model.errors import ModelError
from model.imaging.images import decode
from model.imaging.preprocess import pixel_values
from model.inference.generate import generate_ids
from model.network.bundle import build
from model.network.multiview import ViewJoin
from model.network.store import load, save
from model.training.augment import affine, augment, generator
from model.training.loop import resume, train
from model.training.state import STATE_JSON
from tests.conftest import EXAMPLES
from tests.model.test_remote_code import PLAIN, SEARCHES, STUDIES, _card_snippet, _plain_python
from tests.model.test_train import SHORT, rows, same_weights


def test_the_small_preset_joins_views_as_before_and_small_v2_marks_them() -> None:
    small, v2 = build("small", seed=0), build("small-v2", seed=0)
    assert not hasattr(small.model, "view_join") and "view_join" not in small.model.config.to_dict()
    assert not any(name.startswith("view_join") for name in small.model.state_dict())
    assert v2.model.config.view_join == {"views": 4, "embedding": True, "positions": "sincos"}
    assert v2.model.view_join.slots.shape == (4, 128)
    # The same seed draws the same encoder and decoder: the join is drawn after them.
    v2_state = v2.model.state_dict()
    assert all(torch.equal(t, v2_state[k]) for k, t in small.model.state_dict().items())

    study = [decode(EXAMPLES / "CXR7_IM-2263-1001.png"), decode(EXAMPLES / "CXR7_IM-2263-2001.png")]
    pixels, mask = pixel_values(small.processor, [study, study[:1]], 4)  # (2, 2, 3, H, W): 2 views; 1 and a pad
    with torch.inference_mode():
        plain = small.model.encode_views(pixels, mask).last_hidden_state  # (2, 2*50, 128)
        marked = v2.model.encode_views(pixels, mask).last_hidden_state
        unmasked = v2.model.encode_views(pixels[:1]).last_hidden_state  # the no-mask path, same marks
    added = (marked - plain)[0].reshape(2, 50, 128)  # what the join added, view by view
    assert torch.allclose(added[0, 0], v2.model.view_join.slots[0], atol=1e-5)  # class token: its view's slot only
    assert not torch.allclose(added[0, 1], added[0, 2])  # patches: their own positions
    assert not torch.allclose(added[0], added[1])  # frontal and lateral are told apart
    assert torch.allclose(unmasked, marked[:1], atol=1e-5)


@pytest.mark.parametrize(("name", "embedding", "positions"),
                         [("embedding", True, None), ("positions", False, "sincos"), ("both", True, "sincos")])
def test_each_lever_of_the_join_alone(name: str, embedding: bool, positions: str | None) -> None:
    join = build("small", seed=0, view_join=name, max_views=2).model.view_join
    assert (join.slots is not None, join.positions, join.views) == (embedding, positions, 2)
    assert not hasattr(build("small-v2", seed=0, view_join="none").model, "view_join")
    with pytest.raises(ModelError, match="Unknown view join"):
        build("small", view_join="sideways")
    with pytest.raises(ValueError, match="view slots"):
        ViewJoin(8, views=2)(torch.zeros(1, 3, 5, 8))


def test_small_v2_writes_the_same_tokens_in_plain_transformers(tmp_path: Path) -> None:
    bundle = build("small-v2", seed=0, max_views=3)
    with torch.no_grad():  # marks strong enough that a copy without the join would write other tokens
        bundle.model.view_join.slots.mul_(100)
    model_dir = save(bundle, tmp_path / "xrq-small-v2")
    assert json.loads((model_dir / "config.json").read_text())["view_join"]["positions"] == "sincos"
    files = {uid: [str(EXAMPLES / n) for n in names] for uid, names in STUDIES.items()}
    out = json.loads(_plain_python(PLAIN, [str(model_dir), json.dumps(files), json.dumps(_card_snippet(model_dir))],
                                   tmp_path, tmp_path / "modules"))
    assert out["xrq_imported"] == [] and out["class"].startswith("transformers_modules.")
    loaded = load(model_dir, device="cpu")
    studies = [[decode(f) for f in names] for names in files.values()]
    pixels, mask = pixel_values(loaded.processor, studies, loaded.max_views)
    without = build("small-v2", seed=0, max_views=3, view_join="none").model
    without.load_state_dict(loaded.model.state_dict(), strict=False)
    for name, settings in SEARCHES.items():
        with torch.inference_mode():
            ids = generate_ids(loaded.model, pixels, mask, settings)
            unmarked = generate_ids(without, pixels, mask, settings)
        assert out[name] == ids.tolist(), name
        assert unmarked.tolist() != ids.tolist(), name  # the join is part of what was compared


def test_an_older_small_run_resumes_and_its_model_loads(tmp_path: Path) -> None:
    """A run saved before the join and --augment existed: its stored configuration lacks both keys."""
    config = replace(SHORT, preset="small")
    train(config, tmp_path / "whole")
    train(config, tmp_path / "old", stop_after=3)
    for file in (tmp_path / "old" / "last" / STATE_JSON, tmp_path / "old" / "last" / "xrq.json"):
        stored = json.loads(file.read_text())
        settings = stored["config"] if "config" in stored else stored["training"]["config"]
        del settings["augment"], settings["view_join"]
        file.write_text(json.dumps(stored))
    assert "view_join" not in json.loads((tmp_path / "old" / "last" / "config.json").read_text())
    assert resume(tmp_path / "old").step == 6
    assert same_weights(tmp_path / "whole" / "last", tmp_path / "old" / "last")
    assert not hasattr(load(tmp_path / "old" / "last", device="cpu").model, "view_join")


def test_augment_shifts_zooms_and_exposes_but_never_flips() -> None:
    left_bright = torch.full((3, 224, 224), -0.8)
    left_bright[:, :, :112] = 0.8  # the image's left: the patient's right
    views = left_bright.expand(2, 4, 3, 224, 224)  # (B, V, 3, H, W)
    for step in range(50):
        out = augment(views, generator(0, step))
        assert out.shape == views.shape and not torch.equal(out, views)
        assert (out[..., :100].mean((-3, -2, -1)) > out[..., 124:].mean((-3, -2, -1)) + 0.5).all()
        assert out.min() >= -0.8 and out.max() <= 0.8  # within the view's own range
    theta = affine(10_000, torch.Generator().manual_seed(1))
    assert (theta[:, 0, 0] > 0).all() and (theta[:, 1, 1] > 0).all()  # no mirror, no half turn
    assert (theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0] > 0).all()  # orientation kept
    assert torch.equal(augment(views, generator(3, 7)), augment(views, generator(3, 7)))


def test_augmented_training_differs_reproduces_and_resumes_exactly(tmp_path: Path) -> None:
    config = replace(SHORT, preset="small-v2", augment=True)
    train(config, tmp_path / "a")
    train(config, tmp_path / "b", stop_after=3)
    resume(tmp_path / "b")
    train(replace(config, augment=False), tmp_path / "plain")
    assert same_weights(tmp_path / "a" / "last", tmp_path / "b" / "last")
    assert [r["loss"] for r in rows(tmp_path / "a")] != [r["loss"] for r in rows(tmp_path / "plain")]


def test_the_cli_offers_augment_and_the_view_join(tmp_path: Path) -> None:
    done = CliRunner().invoke(cli, ["train", "--help"])
    assert "--augment" in done.output and "small-v2" in done.output and "--view-join" in done.output
