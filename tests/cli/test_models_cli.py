"""`xrq model init` / `xrq model info`, model cards, and the model and device mistakes a user meets in `xrq submit`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import EXAMPLES, IU_CSV, REPO
from tests.model.test_bundle import DAMAGE, EXPECTED, _parts, damaged


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


def front_matter(card: str) -> dict:
    """The Hugging Face metadata block at the top of a model card."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_model_init_writes_a_card(tmp_path: Path) -> None:
    result = run("model", "init", "--out", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Saved a tiny model (3.5M parameters: ViT 2 layers × 64")
    card = (tmp_path / "m" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["license"] == "apache-2.0" and "custom_code" in meta["tags"]
    assert "datasets" not in meta and "base_model" not in meta  # untrained, from no pretrained part
    assert "**Not for clinical use.**" in card and "## What it is not for" in card and "**Untrained**" in card
    assert "AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)" in card
    fingerprint = json.loads((tmp_path / "m" / "xrq.json").read_text())["fingerprint"]
    assert f"`{fingerprint}`" in card


def test_model_init_from_parts_says_so_and_uses_the_decoders_tokenizer(tmp_path: Path) -> None:
    encoder, decoder = _parts(tmp_path, with_tokenizer=True)
    result = run("model", "init", "--out", str(tmp_path / "m"), "--encoder", encoder, "--decoder", decoder,
                 "--json")
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert made["preset"] is None and made["architecture"].startswith("ViT 1 layers × 32 (224 px, 32-px patches)")
    text = run("model", "init", "--out", str(tmp_path / "t"), "--encoder", encoder, "--decoder", decoder).output
    assert text.startswith("Saved a model of pretrained parts (") and "tiny" not in text.split(" to ")[0]
    meta = json.loads((tmp_path / "m" / "xrq.json").read_text())
    assert meta["preset"] is None and meta["sources"]["tokenizer"] == decoder
    info = json.loads(run("model", "info", str(tmp_path / "m"), "--json").output)
    assert info["tokenizer"]["size"] < 1000 and info["tokenizer"]["source"] == decoder


def test_model_info_shows_what_a_directory_holds(tiny_model: Path) -> None:
    result = run("model", "info", str(tiny_model))
    assert result.exit_code == 0, result.output
    fingerprint = json.loads((tiny_model / "xrq.json").read_text())["fingerprint"]
    lines = result.output.splitlines()
    assert lines[0] == str(tiny_model)
    for expected in (f"fingerprint    {fingerprint} (as recorded in xrq.json)", "views          up to 4 per study",
                     "tokenizer      50257 tokens (GPT2Tokenizer)", "preprocessing  224×224 bilinear",
                     "trained        no (untrained weights)", "model.safetensors 14.0 MB",
                     "AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)"):
        assert any(expected in line for line in lines), (expected, result.output)
    facts = json.loads(run("model", "info", str(tiny_model), "--json").output)
    assert facts["fingerprint"] == fingerprint and facts["max_views"] == 4 and facts["remote_code"]
    assert facts["architecture"]["decoder"] == {"type": "gpt2", "layers": 2, "hidden": 64, "heads": 2,
                                                "vocab_size": 50257, "positions": 256}
    assert facts["preprocessing"]["size"] == {"height": 224, "width": 224}


def test_model_info_on_the_demo_shows_its_training() -> None:
    output = run("model", "info", str(REPO / "models" / "demo")).output
    assert "(as recorded in xrq.json)" in output
    assert "trained        100 of 100 steps on cpu, 9 studies" in output
    assert "command        xrq train --reports data/iu/indiana_reports.csv" in output
    assert "bleu_4 0.914336" in output and "906 tokens" in output


def test_the_demo_card_has_the_metadata_block() -> None:
    meta = front_matter((REPO / "models" / "demo" / "README.md").read_text())
    assert meta["license"] == "cc-by-nc-nd-4.0" and meta["datasets"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"bleu": 0.914336, "cider": 7.767174, "rouge": 0.973324}


@pytest.mark.slow  # trains
def test_train_writes_a_card_with_its_provenance(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run("train", "--reports", str(IU_CSV / "indiana_reports.csv"), "--projections",
                 str(IU_CSV / "indiana_projections.csv"), "--images", str(EXAMPLES), "--out", str(out),
                 "--tokenizer", "train", "--split", "all", "--max-steps", "1", "--batch-size", "9",
                 "--eval-every", "1", "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    card = (out / "best" / "README.md").read_text()
    meta = front_matter(card)
    scores = json.loads((out / "best" / "xrq.json").read_text())["scores"]
    assert meta["datasets"] == ["Indiana University chest X-ray collection (Open-i)"]
    assert meta["license"] == "cc-by-nc-nd-4.0" and meta["model-index"][0]["name"] == "best"
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"bleu": scores["val_bleu_4"], "cider": scores["val_cider"], "rouge": scores["val_rouge_l"]}
    assert "$ xrq train --reports" in card and "9 studies to train on" in card
    assert "measure recall of the training set" in card  # --split all: validated on its training studies


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_models_are_one_error_line(tmp_path: Path, tiny_model: Path, kind: str) -> None:
    folder = damaged(tiny_model, tmp_path / "m", kind)
    for args in (["model", "info", str(folder)],
                 ["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "submit", str(EXAMPLES), "--model", str(folder)]):
        result = run(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
        assert re.search(EXPECTED[kind], result.output), result.output


def test_a_mistyped_model_directory_is_not_sent_to_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    result = run("--database-url", f"sqlite:///{tmp_path / 'x.db'}", "submit", "examples/iu", "--model", "models/dmeo")
    assert result.exit_code == 1
    assert result.output.startswith("Error: No such directory: models/dmeo. Did you mean models/demo? ")
    assert "hub" not in result.output


@pytest.mark.parametrize(("device", "message"), [
    ("garbage", "Error: 'garbage' is not a device; use auto, cpu, cuda or cuda:N (e.g. cuda:1).\n"),
    ("meta", "Error: Device 'meta' cannot run a model (it holds no data or is not supported); "
             "use auto, cpu, cuda or cuda:N.\n"),
])
def test_unusable_devices_are_one_error_line(device: str, message: str, tmp_path: Path, tiny_model: Path) -> None:
    result = run("--database-url", f"sqlite:///{tmp_path / 'x.db'}", "submit", str(EXAMPLES), "--model",
                 str(tiny_model), "--device", device)
    assert result.exit_code == 1 and result.output == message


def test_model_group_help_lists_info() -> None:
    help_text = run("model", "--help").output
    assert "init" in help_text and "info" in help_text
