"""Writing streamed rows: `xrq reports` a row at a time, `xrq export` a batch (a Parquet row group) at a time.

Nothing here holds more than one batch: rows come from db.listing's cursors and leave as they come.
Standard output is flushed at the first row and then at least every FLUSH_EVERY seconds, so a reader
at the other end of a pipe sees the first line at once even when matching rows come slowly.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cli import safecsv
from cli.safecsv import CsvWriter
from model.printable import printable

if TYPE_CHECKING:
    from db.queries import ReportRow

FLUSH_EVERY = 0.2  # seconds
ROW_GROUP = 10_000  # rows of one Parquet row group: what an export holds in memory at most


class _Flusher:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last: float | None = None

    def __call__(self) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= FLUSH_EVERY:
            self.stream.flush()
            self.last = now


def write_reports(rows: Iterable[ReportRow], fmt: str, stream: IO[str], *, failed: bool) -> int:
    """Write rows as JSON lines, CSV (both as stored; CSV with formula-like cells neutralised, and control
    characters escaped on a terminal: cli/safecsv.py) or a table for people (one escaped line a row).

    `failed`: the rows are failed studies (CSV has an `error` column instead of `report`). Returns the
    number of rows written.
    """
    flush = _Flusher(stream)
    n = 0
    line = _line_writer(fmt, stream, failed=failed)
    for row in rows:
        line(row)
        n += 1
        flush()
    stream.flush()
    return n


def _line_writer(fmt: str, stream: IO[str], *, failed: bool) -> Callable[[ReportRow], None]:
    if fmt == "jsonl":
        def json_line(r: ReportRow) -> None:
            stream.write(json.dumps(r.as_dict()) + "\n")

        return json_line
    if fmt == "csv":
        from db.review import REVIEW_COLUMNS

        writer = CsvWriter(stream, terminal=safecsv.is_terminal(stream))  # formulas neutralised (cli/safecsv.py)
        review = () if failed else REVIEW_COLUMNS
        writer.writerow(["study_id", "uid", "job_id", "model", "created_at", "images", "error" if failed else "report",
                         *review])

        def csv_line(r: ReportRow) -> None:
            reviewed = r.as_dict() if review else {}
            writer.writerow([r.study_id, r.uid, r.job_id, r.model, r.created_at.isoformat(), ";".join(r.images),
                             r.error if failed else r.text, *("" if reviewed.get(c) is None else reviewed[c]
                                                              for c in review)])

        return csv_line
    width = max(40, shutil.get_terminal_size((120, 20)).columns - 24)
    stream.write(f"{'job':>4}  {'study':14}  report\n")

    def table_line(r: ReportRow) -> None:
        shown = printable(r.text if r.status == "done" else f"FAILED: {r.error}")
        text = shown if len(shown) <= width else shown[: width - 1] + "…"
        uid = printable(r.uid)
        uid = uid if len(uid) <= 14 else uid[:13] + "…"
        stream.write(f"{r.job_id:>4}  {uid:14}  {text}\n")

    return table_line


def load_export_libraries(fmt: str) -> None:
    """Import what writing `fmt` needs (Parquet: pandas and pyarrow), so that a missing library fails
    before the database is read or a file is made."""
    if fmt == "parquet":
        import pandas  # noqa: F401
        import pyarrow.parquet  # noqa: F401


def export_rows(db: Any, job_ids: list[int]) -> Iterator[list[dict[str, Any]]]:
    """`xrq export`'s rows, batch by batch: db.listing's export rows with their review columns."""
    from db.listing import export_batches
    from db.review import REVIEW_COLUMNS, review_columns

    empty = dict.fromkeys(REVIEW_COLUMNS)
    for batch in export_batches(db, job_ids):
        reviews = review_columns(db, [(r["study_id"], r["reported_by_job"]) for r in batch
                                      if r["reported_by_job"] is not None])
        yield [{**r, **reviews.get((r["study_id"], r["reported_by_job"]), empty)} for r in batch]


@contextmanager
def export_file(fmt: str, out: Path) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """A function that appends a batch of `xrq export` rows (db.queries.EXPORT_COLUMNS) to `out` as `fmt`.

    Typed for pandas users: integers stay integers (`reported_by_job` a nullable integer), `reported_at`
    is UTC with its offset, and `images` a list (joined with `;` in CSV only). Parquet is written a row
    group of ROW_GROUP rows at a time. Its library is imported here, before the database is read, so a
    missing one fails first.
    """
    if fmt == "parquet":
        with _parquet(out) as write:
            yield write
        return
    with out.open("w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            def write_jsonl(rows: list[dict[str, Any]]) -> None:
                for row in rows:
                    f.write(json.dumps({**row, **{c: _iso(row.get(c)) for c in ("reported_at", "signed_at")}}) + "\n")

            yield write_jsonl
            return
        writer = CsvWriter(f)  # formulas neutralised, bytes as stored (cli/safecsv.py)
        writer.writerow(_export_columns())

        def write_csv(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                values = {**row, "images": ";".join(row["images"]),
                          **{c: _iso(row.get(c)) for c in ("reported_at", "signed_at")}}
                writer.writerow(["" if values.get(c) is None else values[c] for c in _export_columns()])

        yield write_csv


def _export_columns() -> tuple[str, ...]:
    from db.queries import EXPORT_COLUMNS
    from db.review import REVIEW_COLUMNS

    return (*EXPORT_COLUMNS, *REVIEW_COLUMNS)


def _iso(when: Any) -> str | None:
    return None if when is None else when.isoformat()


@contextmanager
def _parquet(out: Path) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("job_id", pa.int64()), ("study_id", pa.int64()), ("uid", pa.string()),
                        ("status", pa.string()), ("error", pa.string()), ("attempts", pa.int64()),
                        ("model", pa.string()), ("report", pa.string()), ("reported_at", pa.timestamp("us", "UTC")),
                        ("reported_by_job", pa.int64()), ("images", pa.list_(pa.string())),
                        ("review_state", pa.string()), ("final_text", pa.string()), ("signed_by", pa.string()),
                        ("signed_at", pa.timestamp("us", "UTC"))])
    pending: list[dict[str, Any]] = []
    writers: list[Any] = []  # the ParquetWriter, made with the first row group's schema (pandas' metadata in it)

    def flush() -> None:
        # Through pandas, so that the file carries pandas' metadata (reported_by_job reads back as Int64).
        frame = pd.DataFrame(pending, columns=list(_export_columns()))
        for column in ("job_id", "study_id", "attempts"):
            frame[column] = frame[column].astype("int64")
        frame["reported_by_job"] = frame["reported_by_job"].astype("Int64")
        frame["reported_at"] = pd.to_datetime(frame["reported_at"], utc=True)
        frame["signed_at"] = pd.to_datetime(frame["signed_at"], utc=True)
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        if not writers:
            writers.append(pq.ParquetWriter(out, table.schema))
        writers[0].write_table(table, row_group_size=ROW_GROUP)
        pending.clear()

    def write(rows: list[dict[str, Any]]) -> None:
        pending.extend(rows)
        if len(pending) >= ROW_GROUP:
            flush()

    try:
        yield write
        if pending or not writers:
            flush()
    finally:
        for writer in writers:
            writer.close()
