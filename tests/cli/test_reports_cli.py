"""Getting reports out: filters, whole-job exports read back by pandas, and pictures of studies."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageChops, ImageStat

from cli.main import cli
from testing.badfiles import make_bad_files
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
    # UTC with its offset on SQLite as on PostgreSQL (SQLite hands times back without one).
    assert all(datetime.fromisoformat(r["created_at"]).utcoffset() == timedelta(0) for r in everything)
    assert all(r["created_at"].endswith("+00:00") for r in everything)
    assert jsonl(run(env, "reports", "--job", "1", "--model", "tiny", "--format", "jsonl")) == everything
    assert run(env, "reports", "--model", "other", "--format", "jsonl") == ""
    assert run(env, "reports", "--since", "2999-01-01", "--format", "jsonl") == ""
    assert len(jsonl(run(env, "reports", "--until", "2999-01-01", "--format", "jsonl"))) == 4
    word = everything[0]["report"].split()[0]
    found = jsonl(run(env, "reports", "--text", word.upper(), "--format", "jsonl"))
    assert everything[0]["uid"] in {r["uid"] for r in found}
    assert all(word.lower() in r["report"].lower() for r in found)
    assert run(env, "status", "1", "--json").count("+00:00") == 1
    failed = jsonl(run(env, "reports", "--status", "failed", "--format", "jsonl"))
    assert len(failed) == 7 and {r["status"] for r in failed} == {"failed"}
    bomb = jsonl(run(env, "reports", "--status", "failed", "--text", "too large", "--format", "jsonl"))
    assert [r["uid"] for r in bomb] == ["bad/bomb.png"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_writes_whole_jobs_pandas_reads_back(env: dict[str, str], tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"job.{fmt}"  # the format follows the name
    assert run(env, "export", "1", "-o", str(out)).startswith("Wrote 11 studies of 1 job(s)")
    reader = {"csv": pd.read_csv, "parquet": pd.read_parquet,
              "jsonl": lambda p: pd.read_json(p, lines=True, dtype={"uid": str})}[fmt]
    frame = reader(out)
    assert len(frame) == 11
    assert frame["status"].value_counts().to_dict() == {"failed": 7, "done": 4}
    done = frame[frame["status"] == "done"]
    assert done["report"].str.len().min() > 0
    assert sorted(done["uid"].astype(str)) == ["1000", "25", "54", "7"]
    images = frame["images"][frame["uid"].astype(str) == "1000"].iloc[0]
    assert set(images.split(";") if fmt == "csv" else images) == {
        "1000_IM-0003-1001.dcm.png", "1000_IM-0003-2001.dcm.png", "1000_IM-0003-3001.dcm.png"}
    # Integers stay integers, the missing ones too (in CSV and JSON lines, as blank and null: pandas
    # reads those as floats, Parquet keeps them Int64); times are UTC with their offset.
    for column in ("job_id", "study_id", "attempts"):
        assert pd.api.types.is_integer_dtype(frame[column]), column
    assert frame["reported_by_job"].isna().sum() == 7 and set(done["reported_by_job"]) == {1}
    if fmt == "csv":
        assert set(done["reported_at"].str[-6:]) == {"+00:00"}
        assert ",1,1000_IM-0003-1001.dcm.png;" in out.read_text()  # reported_by_job 1, not 1.0
    else:
        assert str(frame["reported_at"].dtype).endswith(", UTC]") and frame["reported_at"].isna().sum() == 7
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(out)
        assert schema.field("images").type.equals(pa.list_(pa.string()))
        assert schema.field("reported_by_job").type == pa.int64() and schema.field("attempts").type == pa.int64()
        assert schema.field("reported_at").type == pa.timestamp("us", "UTC")
        assert str(frame["reported_by_job"].dtype) == "Int64"
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(isinstance(r["images"], list) and isinstance(r["attempts"], int) for r in rows)
        assert {r["reported_by_job"] for r in rows} == {1, None}
        assert {r["reported_at"][-6:] for r in rows if r["reported_at"]} == {"+00:00"}


def test_reports_carry_confidence_order_by_it_and_filter_on_it(env: dict[str, str]) -> None:
    import math

    everything = jsonl(run(env, "reports", "--format", "jsonl"))
    for r in everything:
        assert len(r["token_logprobs"]) >= 1 and all(lp <= 0 for lp in r["token_logprobs"])
        assert r["confidence"] == pytest.approx(math.exp(sum(r["token_logprobs"]) / len(r["token_logprobs"])))
    by_confidence = jsonl(run(env, "reports", "--order-by", "confidence", "--format", "jsonl"))
    sureness = [r["confidence"] for r in by_confidence]
    assert sureness == sorted(r["confidence"] for r in everything)  # least sure first
    assert len(set(sureness)) == 4, "the tiny model is surer of some studies than others"
    middle = (sureness[1] + sureness[2]) / 2
    unsure = jsonl(run(env, "reports", "--max-confidence", str(middle), "--format", "jsonl"))
    sure = jsonl(run(env, "reports", "--min-confidence", str(middle), "--format", "jsonl"))
    assert {r["uid"] for r in unsure} == {r["uid"] for r in by_confidence[:2]}
    assert {r["uid"] for r in sure} == {r["uid"] for r in by_confidence[2:]}
    first = by_confidence[0]["uid"]
    table = run(env, "reports", "--order-by", "confidence", "--limit", "1")
    assert f"{sureness[0]:.2f}" in table and first in table
    csv_rows = pd.read_csv(__import__("io").StringIO(run(env, "reports", "--format", "csv")), dtype={"uid": str})
    assert "token_logprobs" not in csv_rows.columns
    assert dict(zip(csv_rows["uid"], csv_rows["confidence"], strict=True)) == pytest.approx(
        {r["uid"]: r["confidence"] for r in everything})
    result = CliRunner().invoke(cli, ["reports", "--status", "failed", "--order-by", "confidence"], env=env)
    assert result.exit_code == 2 and "failed studies have no confidence" in result.output
    paged = jsonl(run(env, "reports", "--order-by", "confidence", "--offset", "2", "--format", "jsonl"))
    assert [r["uid"] for r in paged] == [r["uid"] for r in by_confidence[2:]]  # its pages go by offset
    result = CliRunner().invoke(cli, ["reports", "--order-by", "confidence", "--after", "1.1"], env=env)
    assert result.exit_code == 2 and "with --order-by confidence page with --offset" in result.output


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_carries_confidence_and_token_logprobs(env: dict[str, str], tmp_path: Path, fmt: str) -> None:
    listed = {r["uid"]: r for r in jsonl(run(env, "reports", "--format", "jsonl"))}
    out = tmp_path / f"job.{fmt}"
    run(env, "export", "1", "-o", str(out))
    reader = {"csv": pd.read_csv, "parquet": pd.read_parquet,
              "jsonl": lambda p: pd.read_json(p, lines=True, dtype={"uid": str})}[fmt]
    frame = reader(out)
    done = frame[frame["status"] == "done"]
    assert dict(zip(done["uid"].astype(str), done["confidence"], strict=True)) == pytest.approx(
        {uid: r["confidence"] for uid, r in listed.items()})
    assert frame[frame["status"] == "failed"]["confidence"].isna().all()
    if fmt == "csv":
        assert "token_logprobs" not in frame.columns
    else:
        for uid, logprobs in zip(done["uid"].astype(str), done["token_logprobs"], strict=True):
            assert list(logprobs) == pytest.approx(listed[uid]["token_logprobs"])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(out)
        assert schema.field("token_logprobs").type.equals(pa.list_(pa.float64()))
        assert schema.field("confidence").type == pa.float64()


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
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert len(pictures) == 11 and "1000.png" in pictures and "bad_empty.png" in pictures
    index = (out / "index.html").read_text()
    assert all(p in index for p in pictures) and "FAILED: bad/empty.png: empty file (0 bytes)" in index
    assert len(list((out / "thumbs").glob("*.jpg"))) == 3 + 2 + 2 + 1  # the views of the four good studies


def test_show_unknown_study_says_what_to_do(env: dict[str, str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["show", "nope", "-o", str(tmp_path / "x.png")], env=env)
    assert result.exit_code == 1
    assert result.output == "Error: no study with uid 'nope': give a uid from `xrq reports`\n"


def test_show_attention_draws_where_the_model_looked_and_marks_unsure_words(env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "s.png"
    printed = run(env, "show", "1000", "-o", str(out), "--attention", "--threshold", "0.2").splitlines()
    listed = {r["uid"]: r for r in jsonl(run(env, "reports", "--format", "jsonl"))}["1000"]
    assert printed[0].startswith(f"Report (confidence {listed['confidence']:.2f}), ")
    assert printed[0].endswith("word(s) below 0.2 in [brackets]:")
    assert "[" in printed[1]  # the random tiny model is unsure of most of its words
    assert printed[2:] == [f"Wrote {out}", f"Wrote {tmp_path / 's-attention.png'} (1 sentence(s) x views)"]
    picture = Image.open(tmp_path / "s-attention.png")
    assert picture.width > 800  # three views side by side
    assert ImageStat.Stat(picture.convert("L")).stddev[0] > 20
    job = tmp_path / "pictures"
    run(env, "show", "--job", "1", "-o", str(job), "--attention")
    assert sorted(p.name for p in job.glob("*-attention.png")) == [
        "1000-attention.png", "25-attention.png", "54-attention.png", "7-attention.png"]
    # The other methods reach the maps: the same layout, each picture naming its method in its head.
    for method in ("relevance", "occlusion"):
        other = tmp_path / f"{method}.png"
        assert run(env, "show", "1000", "-o", str(other), "--attention", "--attention-method", method,
                   "--threshold", "0.2").splitlines()[1] == printed[1]
        drawn = Image.open(tmp_path / f"{method}-attention.png")
        assert drawn.size == picture.size
        assert ImageChops.difference(drawn.convert("RGB"), picture.convert("RGB")).getbbox() is not None


def test_show_attention_of_a_report_without_tokens_says_why(env: dict[str, str], tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(env["XRQ_DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text("UPDATE reports SET token_ids = NULL, token_logprobs = NULL, confidence = NULL"))
    engine.dispose()
    result = CliRunner().invoke(cli, ["show", "25", "-o", str(tmp_path / "x.png"), "--attention"], env=env)
    assert result.exit_code == 1
    assert result.output == ("Error: the report of study 25 was stored before xrq kept the tokens it was "
                             "written with, so there is nothing to replay; reports written since have them\n")
