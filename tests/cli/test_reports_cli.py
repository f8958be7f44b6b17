"""Getting reports out: filters, whole-job exports read back by pandas, and pictures of studies."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageStat

from cli.main import cli
from tests.badfiles import make_bad_files
from tests.conftest import EXAMPLES, IU_CSV


@pytest.fixture
def env(db_url: str, tiny_model: Path, iu_folder: Path, tmp_path: Path) -> dict[str, str]:
    """A database holding one job: four IU studies reported, the bad files failed."""
    make_bad_files(iu_folder, EXAMPLES / "CXR7_IM-2263-1001.png", tmp_path / "outside.png")
    env = {"XRQ_DATABASE_URL": db_url, "XRQ_MODEL": str(tiny_model)}
    assert CliRunner().invoke(cli, ["submit", str(iu_folder)], env=env).exit_code == 0
    return env


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_reports_filter_by_job_model_date_status_and_text(env: dict[str, str]) -> None:
    everything = jsonl(run(env, "reports", "--format", "jsonl"))
    assert sorted(r["uid"] for r in everything) == ["1000", "25", "54", "7"]
    assert jsonl(run(env, "reports", "--job", "1", "--model", "tiny", "--format", "jsonl")) == everything
    assert run(env, "reports", "--model", "other", "--format", "jsonl") == ""
    assert run(env, "reports", "--since", "2999-01-01", "--format", "jsonl") == ""
    assert len(jsonl(run(env, "reports", "--until", "2999-01-01", "--format", "jsonl"))) == 4
    word = everything[0]["report"].split()[0]
    found = jsonl(run(env, "reports", "--text", word.upper(), "--format", "jsonl"))
    assert everything[0]["uid"] in {r["uid"] for r in found}
    assert all(word.lower() in r["report"].lower() for r in found)
    failed = jsonl(run(env, "reports", "--status", "failed", "--format", "jsonl"))
    assert len(failed) == 7 and {r["status"] for r in failed} == {"failed"}
    bomb = jsonl(run(env, "reports", "--status", "failed", "--text", "too large", "--format", "jsonl"))
    assert [r["uid"] for r in bomb] == ["bad/bomb.png"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_writes_whole_jobs_pandas_reads_back(env: dict[str, str], tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"job.{fmt}"
    assert run(env, "export", "1", "--format", fmt, "-o", str(out)).startswith("Wrote 11 studies of 1 job(s)")
    reader = {"csv": pd.read_csv, "parquet": pd.read_parquet,
              "jsonl": lambda p: pd.read_json(p, lines=True)}[fmt]
    frame = reader(out)
    assert len(frame) == 11
    assert frame["status"].value_counts().to_dict() == {"failed": 7, "done": 4}
    done = frame[frame["status"] == "done"]
    assert done["report"].str.len().min() > 0
    assert sorted(done["uid"].astype(str)) == ["1000", "25", "54", "7"]
    assert set(frame["images"][frame["uid"].astype(str) == "1000"].iloc[0].split(";")) == {
        "1000_IM-0003-1001.dcm.png", "1000_IM-0003-2001.dcm.png", "1000_IM-0003-3001.dcm.png"}


def test_show_draws_the_study_with_its_truth(env: dict[str, str], tmp_path: Path) -> None:
    run(env, "truth", "import", str(IU_CSV / "indiana_reports.csv"))
    run(env, "evaluate", "--job", "1", "--text", "both", "--no-meteor")
    out = tmp_path / "s.png"
    assert run(env, "show", "1000", "-o", str(out)) == f"Wrote {out}\n"
    picture = Image.open(out).convert("L")
    assert picture.width >= 1000 and picture.height >= 600
    assert ImageStat.Stat(picture).stddev[0] > 20  # X-rays and text, not a blank page


def test_show_job_writes_a_picture_per_study_and_an_index(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pictures"
    run(env, "show", "--job", "1", "-o", str(out))
    pictures = sorted(out.glob("study-*.png"))
    assert len(pictures) == 11
    index = (out / "index.html").read_text()
    assert all(p.name in index for p in pictures) and "FAILED: bad/empty.png: empty file (0 bytes)" in index


def test_show_unknown_study_says_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["show", "nope", "-o", str(tmp_path / "x.png")], env=env)
    assert result.exit_code == 1
    assert result.output == "Error: no study 'nope': give a study id or uid from `xrq reports`\n"
