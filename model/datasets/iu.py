"""Ground truth from CSV files: the IU X-ray (Kaggle edition) collection, its splits, and generic CSVs.

Everything comes back as plain records (dataclasses, dicts of strings), so callers never handle
pandas objects. Cells are read as text with no NaN: a blank cell is "".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from model.errors import TruthFormatError

REPORT_COLUMNS = ("uid", "MeSH", "Problems", "indication", "comparison", "findings", "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
SPLIT_COLUMNS = ("uid", "split")
SPLITS = ("train", "val", "test")
MIN_BENCHMARK_IMAGES = 2


@dataclass(frozen=True)
class IUStudy:
    """One IU study (exam): its report sections and its images as (filename, projection) pairs."""

    uid: str
    findings: str
    impression: str
    mesh: str
    problems: str
    indication: str
    comparison: str
    images: tuple[tuple[str, str], ...] = ()


def read_csv(path: str | Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    """Read a CSV as text cells (blank = ""), raising TruthFormatError if it or a column is missing."""
    path = Path(path)
    if not path.is_file():
        raise TruthFormatError(f"{what} not found: {path}. Check the path (or download the file).")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise TruthFormatError(f"{what} {path} is not a readable UTF-8 CSV file: {exc}") from exc
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise TruthFormatError(
            f"{what} {path} has no column {', '.join(map(repr, absent))}; "
            f"its columns are {', '.join(map(repr, frame.columns))}."
        )
    return frame


def read_iu(reports_csv: str | Path, projections_csv: str | Path | None = None) -> dict[str, IUStudy]:
    """All studies of `indiana_reports.csv`, in file order, with images from `indiana_projections.csv`.

    Without a projections file every study has no images (so none passes the benchmark filter).
    """
    reports = read_csv(reports_csv, REPORT_COLUMNS, "IU reports CSV")
    images: dict[str, list[tuple[str, str]]] = {}
    if projections_csv is not None:
        projections = read_csv(projections_csv, PROJECTION_COLUMNS, "IU projections CSV")
        for uid, filename, projection in zip(
            projections["uid"], projections["filename"], projections["projection"], strict=True
        ):
            images.setdefault(uid.strip(), []).append((filename, projection))
    studies = {}
    for row in reports.itertuples(index=False):
        uid = str(row.uid).strip()
        studies[uid] = IUStudy(
            uid=uid,
            findings=str(row.findings).strip(),
            impression=str(row.impression).strip(),
            mesh=str(row.MeSH).strip(),
            problems=str(row.Problems).strip(),
            indication=str(row.indication).strip(),
            comparison=str(row.comparison).strip(),
            images=tuple(images.get(uid, ())),
        )
    return studies


def is_benchmark_study(study: IUStudy) -> bool:
    """The benchmark protocol's filter: non-empty findings and at least two images."""
    return bool(study.findings) and len(study.images) >= MIN_BENCHMARK_IMAGES


def benchmark_split(split_csv: str | Path) -> dict[str, str]:
    """{uid: "train" | "val" | "test"} from `r2gen_split.csv`, the split published work uses."""
    frame = read_csv(split_csv, SPLIT_COLUMNS, "Split CSV")
    split = {str(u).strip(): str(s).strip() for u, s in zip(frame["uid"], frame["split"], strict=True)}
    unknown = sorted({s for s in split.values() if s not in SPLITS})
    if unknown:
        raise TruthFormatError(f"Split CSV {split_csv} names unknown splits {unknown}; expected {SPLITS}.")
    return split


def random_split(uids: Iterable[str], seed: int, test_fraction: float = 0.2) -> dict[str, str]:
    """{uid: "train" | "test"}, the same for the same seed whatever the input order or Python run.

    Studies are ranked by sha256(f"{seed}:{uid}") and the first round(n * test_fraction) go to test.
    Hashing (not `random.shuffle` of the input order) keeps a study's side stable when other
    studies are added: only studies near the cut can move.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be within [0, 1], not {test_fraction}")
    unique = sorted(set(uids))
    ranked = sorted(unique, key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).hexdigest())
    n_test = round(len(ranked) * test_fraction)
    return {u: ("test" if rank < n_test else "train") for rank, u in enumerate(ranked)}


def split_texts(texts: Mapping[str, str], split: Mapping[str, str], name: str) -> dict[str, str]:
    """The texts of the studies in split `name` (e.g. "test"), in `texts` order."""
    return {uid: text for uid, text in texts.items() if split.get(uid) == name}


def benchmark_findings(studies: Mapping[str, IUStudy], split: Mapping[str, str]) -> dict[str, str]:
    """{uid: findings} for the studies that are both in `split` and pass the benchmark filter."""
    return {u: s.findings for u, s in studies.items() if u in split and is_benchmark_study(s)}


def read_reports_csv(
    path: str | Path, id_column: str = "study_id", report_column: str = "report"
) -> dict[str, str]:
    """{study id: report} from any CSV with a study-id column and a report column.

    Ids are kept as text (so "007" stays "007"). Rows with a blank report are left out: they are not
    ground truth. A repeated id is an error, because which of its reports is the truth is unknowable.
    """
    frame = read_csv(path, (id_column, report_column), "Reports CSV")
    out: dict[str, str] = {}
    seen: set[str] = set()
    for raw_id, report in zip(frame[id_column], frame[report_column], strict=True):
        study_id, text = str(raw_id).strip(), str(report).strip()
        if not study_id:
            raise TruthFormatError(f"Reports CSV {path} has a row with a blank {id_column!r}.")
        if study_id in seen:
            raise TruthFormatError(f"Reports CSV {path} lists study {study_id!r} twice; keep one row.")
        seen.add(study_id)
        if text:
            out[study_id] = text
    return out


@dataclass(frozen=True)
class Predictions:
    """Another system's reports (or xrq's own export) read for scoring: {study id: report}."""

    reports: dict[str, str]
    id_column: str  # the column the ids came from (chosen automatically when not given)
    rows: int  # rows in the file, blank reports included
    columns: tuple[str, ...]
    # {study id: confidence in 0..1} when the file has a `confidence` column (xrq's own reports and
    # exports do): what the calibration reads. Blank cells are left out.
    confidence: dict[str, float] = field(default_factory=dict)


def read_predictions(path: str | Path, id_column: str | None = None, report_column: str = "report") -> Predictions:
    """Reports keyed by study id from a CSV, JSON lines (`.jsonl`/`.json`/`.ndjson`) or Parquet file.

    Without `id_column`, ids come from `uid` when the file has one, else from `study_id`: xrq's own
    files (`xrq reports`, `xrq export`) hold both, and `study_id` there is the database's row id,
    which ground truth never knows. Rows with a blank report are left out (failed studies in an
    export); an id listed twice with the same report counts once (a study in two exported jobs),
    with different reports it is an error.
    """
    path = Path(path)
    columns, rows = _table_rows(path)
    column = id_column or ("uid" if "uid" in columns else "study_id")
    absent = [c for c in (column, report_column) if c not in columns]
    if absent:
        raise TruthFormatError(f"{path} has no column {', '.join(map(repr, absent))}; its columns are "
                               f"{', '.join(map(repr, columns))}.")
    out: dict[str, str] = {}
    sure: dict[str, float] = {}
    count = 0
    for where, row in rows:
        count += 1
        study_id, text = _cell(row.get(column)), _cell(row.get(report_column))
        if not study_id:
            raise TruthFormatError(f"{path}{where}: blank {column!r}; every row needs a study id.")
        if not text:
            continue
        if out.get(study_id, text) != text:
            raise TruthFormatError(f"{path} lists study {study_id!r} twice with different reports; keep one "
                                   "(the reports of one model).")
        out[study_id] = text
        confidence = _confidence(row.get(CONFIDENCE_COLUMN), f"{path}{where}")
        if confidence is not None:
            sure[study_id] = confidence
    return Predictions(out, column, count, columns, sure)


CONFIDENCE_COLUMN = "confidence"


def _confidence(value: object, where: str) -> float | None:
    """A `confidence` cell as a number in 0..1; blank is None, anything else is an error that says where."""
    text = _cell(value)
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise TruthFormatError(f"{where}: confidence {text!r} is not a number from 0 to 1.")
    return number


def _cell(value: object) -> str:
    """A cell as text: None and NaN are blank, 1000.0 (a float column pandas made) is "1000"."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _table_rows(path: Path) -> tuple[tuple[str, ...], list[tuple[str, dict[str, object]]]]:
    """(column names, [(where, row)]) of a predictions file; `where` locates a row in messages."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise TruthFormatError(f"Cannot read {path} as Parquet: {exc}.") from exc
        records = frame.to_dict(orient="records")
        return tuple(map(str, frame.columns)), [(f" row {i}", r) for i, r in enumerate(records, 1)]
    if suffix not in (".jsonl", ".json", ".ndjson"):
        frame = read_csv(path, (), "Predictions CSV")
        records = frame.to_dict(orient="records")
        return tuple(map(str, frame.columns)), [(f" row {i}", r) for i, r in enumerate(records, 1)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TruthFormatError(f"Cannot read reports file {path}: {getattr(exc, 'strerror', None) or exc}.") from exc
    rows: list[tuple[str, dict[str, object]]] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TruthFormatError(f"{path}:{number}: not a JSON object ({exc}).") from exc
        if not isinstance(row, dict):
            raise TruthFormatError(f"{path}:{number}: expected a JSON object, not {type(row).__name__}.")
        columns.update(dict.fromkeys(row))
        rows.append((f":{number}", row))
    return tuple(columns), rows
