"""`xrq reports` and `xrq export` carry each draft's review: review_state, final_text, signed_by, signed_at."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from db import review
from db.accounts import by_name
from tests.web.conftest import make_site


def test_reports_and_export_carry_the_review(db_url: str, tmp_path: Path) -> None:
    _, db, seeded = make_site(db_url, tmp_path)
    alice = by_name(db, "alice")
    assert alice is not None
    review.submit(db, seeded.report_ids["1000"], base_version=0, action="sign", text="Signed text.",
                  author_id=alice.id)
    review.submit(db, seeded.report_ids["1001"], base_version=0, action="reject", text="", reason="wrong side",
                  author_id=alice.id)
    runner = CliRunner()
    base = ["--database-url", db_url]
    lines = runner.invoke(cli, [*base, "reports", "--format", "jsonl"]).output.splitlines()
    rows = {r["uid"]: r for r in map(json.loads, lines)}
    assert rows["1000"]["review_state"] == "signed" and rows["1000"]["final_text"] == "Signed text."
    assert rows["1000"]["signed_by"] == "alice" and rows["1000"]["signed_at"].endswith("+00:00")
    assert rows["1000"]["report"] == "The heart is normal in size. The lungs are clear. No pleural effusion."
    assert (rows["1001"]["review_state"], rows["1001"]["final_text"]) == ("rejected", None)
    assert (rows["1002"]["review_state"], rows["1002"]["signed_by"]) == ("draft", None)

    table = list(csv.DictReader(io.StringIO(runner.invoke(cli, [*base, "reports", "--format", "csv"]).output)))
    assert {r["uid"]: r["review_state"] for r in table} == {"1000": "signed", "1001": "rejected", "1002": "draft",
                                                           "rsna": "draft"}
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"export.{suffix}"
        result = runner.invoke(cli, [*base, "export", str(seeded.job_id), "-o", str(out)])
        assert result.exit_code == 0, result.output
        if suffix == "parquet":
            import pandas as pd

            frame = pd.read_parquet(out)
            signed = frame[frame.uid == "1000"].iloc[0]
            assert signed.final_text == "Signed text." and str(signed.signed_at.tz) == "UTC"
        elif suffix == "jsonl":
            exported = {r["uid"]: r for r in map(json.loads, out.read_text().splitlines())}
            assert exported["1000"]["signed_by"] == "alice" and exported["rsna"]["review_state"] == "draft"
        else:
            exported = {r["uid"]: r for r in csv.DictReader(out.open())}
            assert exported["1001"]["review_state"] == "rejected" and exported["1000"]["final_text"] == "Signed text."
