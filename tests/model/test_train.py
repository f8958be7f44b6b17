"""Training on the real IU studies bundled in examples/iu: memorisation, determinism, exact resume, missing data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.datasets.iu import read_iu
from model.errors import TrainingError
from model.imaging.images import decode
from model.inference.generate import GenerationSettings, generate
from model.metrics.scoring import score
from model.metrics.text import normalise
from model.network.bundle import build
from model.network.store import load
from model.training import loop as train_module
from model.training.data import iu_key, load_data
from model.training.loop import TrainConfig, resume, train
from model.training.tokenizer import train_tokenizer
from tests.conftest import EXAMPLES, IU_CSV

REPORTS, PROJECTIONS = str(IU_CSV / "indiana_reports.csv"), str(IU_CSV / "indiana_projections.csv")
# The 9 bundled studies with findings and an image (1002 and 3 have no findings).
WITH_FINDINGS = {"7", "14", "25", "54", "103", "303", "1000", "1001", "1003"}
# A few seconds' run: dropout on (so resume must restore the RNG), accumulation, a mid-run validation.
SHORT = TrainConfig(reports=REPORTS, projections=PROJECTIONS, images=str(EXAMPLES), tokenizer="train",
                    split="all", max_steps=6, batch_size=3, grad_accum=2, lr=3e-3, warmup=2, eval_every=4,
                    max_tokens=16, seed=3)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_overfits_the_bundled_studies_until_reports_reproduce_them(tmp_path: Path) -> None:
    config = TrainConfig(reports=REPORTS, projections=PROJECTIONS, images=str(EXAMPLES), tokenizer="train",
                         split="all", max_steps=60, batch_size=9, lr=3e-3, warmup=5, dropout=0.0, eval_every=30,
                         max_tokens=128, seed=0, init_std=0.0)  # the tiny preset's wide init: memorises in 60 steps
    result = train(config, tmp_path / "run")
    assert result.finished and result.step == 60 and result.best == tmp_path / "run" / "best"

    # The inference path (files → decode → preprocess → batched generate) on the saved best model.
    bundle = load(tmp_path / "run" / "best", device="cpu")
    data = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="all", split="all", seed=0)
    assert {e.uid for e in data.train} == WITH_FINDINGS
    pictures = [[decode(p) for p in e.images] for e in data.train]
    reports = generate(bundle, pictures, GenerationSettings(max_new_tokens=128))
    hypotheses = {e.uid: r for e, r in zip(data.train, reports, strict=True)}
    truth = {e.uid: e.text for e in data.train}
    scores = score(truth, hypotheses, with_meteor=False)
    assert scores.corpus["bleu_4"] > 0.9, hypotheses
    assert scores.distinct_reports == len(WITH_FINDINGS)  # no collapse to one template
    assert normalise(hypotheses["7"]) == normalise(truth["7"])

    # The run describes itself: metadata, rows, figure.
    meta = bundle.meta.to_dict()
    assert meta["training"]["config"]["tokenizer"] == "train" and meta["training"]["data"]["train"] == 9
    assert meta["scores"]["val_bleu_4"] == result.best_score > 0.85  # the protocol cuts references at 59 tokens
    assert len(bundle.tokenizer) < 1000 and bundle.model.config.decoder.vocab_size == len(bundle.tokenizer)
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == list(range(1, 61))
    assert {"step", "epoch", "loss", "lr", "images_per_s"} <= logged[0].keys() and "val_loss" not in logged[0]
    assert {"val_loss", "val_bleu_4", "val_cider"} <= logged[29].keys()
    assert logged[-1]["loss"] < logged[0]["loss"] / 20
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000


@pytest.mark.slow  # trains
def test_two_runs_with_the_same_seed_give_identical_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(SHORT, tmp_path / "a")
    monkeypatch.setattr(train_module, "CACHE_MAX_BYTES", 0)  # b decodes every batch in 2 loader processes
    train(SHORT, tmp_path / "b", workers=2)
    train(replace(SHORT, seed=4), tmp_path / "c")
    assert same_weights(tmp_path / "a" / "last", tmp_path / "b" / "last")
    assert [r["loss"] for r in rows(tmp_path / "a")] == [r["loss"] for r in rows(tmp_path / "b")]
    assert not same_weights(tmp_path / "a" / "last", tmp_path / "c" / "last")


@pytest.mark.slow  # trains
def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    whole = train(SHORT, tmp_path / "whole")
    first = train(SHORT, tmp_path / "split", stop_after=3)
    assert (first.step, first.finished) == (3, False)
    assert not same_weights(tmp_path / "whole" / "last", tmp_path / "split" / "last")
    # A crash after step 3's checkpoint leaves rows the resumed run must log again.
    with (tmp_path / "split" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    second = resume(tmp_path / "split")
    assert (second.step, second.finished, whole.finished) == (6, True, True)
    assert same_weights(tmp_path / "whole" / "last", tmp_path / "split" / "last")
    assert [_stable(r) for r in rows(tmp_path / "whole")] == [_stable(r) for r in rows(tmp_path / "split")]
    state = load_file(str(tmp_path / "split" / "last" / "training_state.safetensors"))
    assert "rng.torch" in state and any(k.endswith(".exp_avg_sq") for k in state)
    assert not list((tmp_path / "split").rglob("*.bin")) and not list((tmp_path / "split").rglob("*.pt"))
    assert resume(tmp_path / "split").step == 6  # finished: nothing left to do


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "images_per_s"}  # wall-clock throughput varies


@pytest.mark.slow  # trains
def test_missing_and_unreadable_images_are_counted_not_fatal(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "1000_IM-0003-1001.dcm.png", images / "sub")
    shutil.copy(EXAMPLES / "CXR54_IM-2145-1001.png", images)
    (images / "CXR7_IM-2263-1001.png").write_text("not a picture")  # present but unreadable
    data = load_data(REPORTS, PROJECTIONS, images, text="findings", views="all", split="all", seed=0)
    studies = read_iu(REPORTS, PROJECTIONS)
    with_findings = [s for s in studies.values() if s.findings]
    s = data.summary
    assert (s.studies, s.train, s.images_used) == (3851, 3, 3)
    assert s.empty_text == 3851 - len(with_findings)
    assert s.without_images == len(with_findings) - 3
    assert s.images_missing == sum(len(x.images) for x in with_findings) - 3
    result = train(replace(SHORT, images=str(images), max_steps=2, eval_every=2), tmp_path / "run")
    assert result.finished and result.scores["val_studies"] == 2  # study 7's only file cannot be decoded

    frontal = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="frontal", split="all", seed=0)
    assert "14" not in {e.uid for e in frontal.train}  # only its lateral view is bundled
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="No training study"):
        load_data(REPORTS, PROJECTIONS, tmp_path / "empty", text="findings", views="all", split="all", seed=0)


def test_splits_of_the_bundled_studies() -> None:
    bench = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="all", split="benchmark", seed=0)
    assert {e.uid for e in bench.train} == {"1000", "1001", "14", "25", "54", "7"}
    assert [e.uid for e in bench.val] == ["103"] and bench.summary.not_in_split == 2  # 1003 and 303
    rand = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="all", split="random", seed=0)
    assert (len(rand.train), len(rand.val)) == (7, 2)
    assert not {e.uid for e in rand.train} & {e.uid for e in rand.val}
    both = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="both", views="all", split="all", seed=0)
    assert len(both.train) == 11  # 1002 and 3 have an impression
    study_3 = next(e for e in both.train if e.uid == "3")
    assert [p.name for p in study_3.images] == ["3_IM-1384-1001.dcm.png", "3_IM-1384-2001.dcm.png"]  # one copy each


def test_iu_keys_match_kaggle_and_open_i_names() -> None:
    assert iu_key("1000_IM-0003-1001.dcm.png") == iu_key("CXR1000_IM-0003-1001.png") == "1000_IM-0003-1001"
    assert iu_key("5_IM-2117-1003002.dcm.png") == "5_IM-2117-1003002"
    assert iu_key("notes.txt") is None and iu_key("CXR1000_IM-0003-1001.txt") is None


def test_trained_tokenizer_is_small_and_sets_the_model_token_ids(tmp_path: Path) -> None:
    texts = [e.text for e in load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="all",
                                       split="all", seed=0).train]
    tok = train_tokenizer(texts, vocab_size=500)
    assert len(tok) <= 500 and tok.eos_token_id == tok.bos_token_id == tok.pad_token_id == 0
    assert tok.decode(tok(texts[0])["input_ids"]) == texts[0]
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    bundle = build("tiny", tokenizer=folder)
    assert bundle.model.config.decoder.vocab_size == len(tok)
    assert bundle.model.generation_config.eos_token_id == bundle.model.config.decoder_start_token_id == 0


def test_bad_combinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs its own vocabulary"):
        train(replace(SHORT, decoder="gpt2"), tmp_path / "x")
    with pytest.raises(TrainingError, match="No checkpoint to resume"):
        resume(tmp_path / "nothing")
    train(replace(SHORT, max_steps=1), tmp_path / "once")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(SHORT, tmp_path / "once")
    with pytest.raises(TrainingError, match="exceeds the decoder's 256 positions"):
        train(replace(SHORT, max_tokens=300), tmp_path / "long")


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_init_std_redraws_the_parts_built_from_scratch_as_their_preset_would(preset: str) -> None:
    config = replace(SHORT, preset=preset, init_std=0.05)
    data = load_data(REPORTS, PROJECTIONS, EXAMPLES, text="findings", views="all", split="all", seed=0)
    bundle = train_module._initial_bundle(config, data.train)
    built = build(preset, seed=config.seed)
    model_config = bundle.model.config
    assert model_config.encoder.initializer_range == model_config.decoder.initializer_range == 0.05
    query = bundle.model.encoder.layers[0].attention.q_proj.weight
    assert abs(float(query.std()) - 0.05) < 0.01  # redrawn at the new std
    positions = bundle.model.encoder.embeddings.position_embeddings
    same = torch.equal(positions, built.model.encoder.embeddings.position_embeddings)
    assert same == (preset == "small")  # the small preset's sin-cos positions are kept, not redrawn


class _Interrupt:
    """A progress listener that stops the run (as Ctrl-C would) after its first logged step."""

    def start(self, data: object, first_step: int, total_steps: int) -> None:
        pass

    def row(self, row: dict) -> None:
        raise KeyboardInterrupt


def test_a_run_interrupted_before_its_first_checkpoint_can_be_resumed_or_restarted(tmp_path: Path) -> None:
    config = replace(SHORT, max_steps=2, eval_every=2)
    for again in ("resume", "train"):
        out = tmp_path / again
        with pytest.raises(KeyboardInterrupt):
            train(config, out, progress=_Interrupt())
        assert not (out / "last").exists() and (out / "metrics.jsonl").exists()  # stopped before step 2's save
        result = resume(out) if again == "resume" else train(config, out)
        assert result.finished and result.step == 2 and (out / "last").is_dir()
        assert [r["step"] for r in rows(out) if "loss" in r] == [1, 2]  # no rows of the stopped run left
        assert train_module.resume_config(out) == config
    assert same_weights(tmp_path / "resume" / "last", tmp_path / "train" / "last")
