"""Reading ground truth CSVs: the IU collection, its splits, and generic id/report CSVs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from common.errors import InputError
from model.datasets.iu import (
    IUStudy,
    benchmark_findings,
    benchmark_split,
    is_benchmark_study,
    random_split,
    read_iu,
    read_reports_csv,
    split_texts,
)
from model.errors import ModelError, TruthFormatError
from tests.conftest import IU_CSV as IU_DIR

REPORTS = (
    "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
    '1,normal,normal,Xray Chest PA and Lateral,Positive TB test,None.,"The heart is normal. Clear lungs.",'
    "Normal chest x-XXXX.\n"
    "007,Cardiomegaly/mild,Cardiomegaly,Chest,,,,Mild cardiomegaly.\n"
    "3,normal,normal,Chest,,,Lungs clear.,No disease.\n"
)
PROJECTIONS = (
    "uid,filename,projection\n"
    "1,1_IM-0001-4001.dcm.png,Frontal\n1,1_IM-0001-3001.dcm.png,Lateral\n"
    "007,7_IM-1.dcm.png,Frontal\n007,7_IM-2.dcm.png,Lateral\n3,3_IM-1.dcm.png,Frontal\n"
)


def need_iu() -> Path:
    """The IU CSV folder shipped in the repository (data/iu)."""
    return IU_DIR


@pytest.fixture
def iu_files(tmp_path: Path) -> tuple[Path, Path]:
    reports, projections = tmp_path / "reports.csv", tmp_path / "projections.csv"
    reports.write_text(REPORTS)
    projections.write_text(PROJECTIONS)
    return reports, projections


def test_read_iu_gives_plain_records(iu_files: tuple[Path, Path]) -> None:
    studies = read_iu(*iu_files)
    assert list(studies) == ["1", "007", "3"]  # file order, ids as text
    one = studies["1"]
    assert one == IUStudy(
        uid="1",
        findings="The heart is normal. Clear lungs.",
        impression="Normal chest x-XXXX.",
        mesh="normal",
        problems="normal",
        indication="Positive TB test",
        comparison="None.",
        images=(("1_IM-0001-4001.dcm.png", "Frontal"), ("1_IM-0001-3001.dcm.png", "Lateral")),
    )
    assert studies["007"].findings == "" and studies["007"].indication == ""  # blank, never NaN


def test_benchmark_filter_needs_findings_and_two_images(iu_files: tuple[Path, Path]) -> None:
    studies = read_iu(*iu_files)
    assert [u for u, s in studies.items() if is_benchmark_study(s)] == ["1"]  # 007: no findings; 3: 1 image
    assert not any(is_benchmark_study(s) for s in read_iu(iu_files[0]).values())  # no projections given


def test_missing_file_and_column_are_named_errors(tmp_path: Path, iu_files: tuple[Path, Path]) -> None:
    with pytest.raises(TruthFormatError, match="not found"):
        read_iu(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,findings\n1,Clear.\n")
    with pytest.raises(TruthFormatError, match="'MeSH'") as info:
        read_iu(bad)
    assert isinstance(info.value, InputError) and not isinstance(info.value, ModelError)  # the CSV's fault
    with pytest.raises(TruthFormatError, match="'projection'"):
        read_iu(iu_files[0], bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(TruthFormatError, match="not a readable"):
        read_reports_csv(empty)


def test_benchmark_split_reads_and_validates(tmp_path: Path) -> None:
    split = tmp_path / "split.csv"
    split.write_text("uid,r2gen_id,split\n1,CXR1_IM-0001,train\n2,CXR2_IM-0002,test\n")
    assert benchmark_split(split) == {"1": "train", "2": "test"}
    split.write_text("uid,split\n1,dev\n")
    with pytest.raises(TruthFormatError, match="dev"):
        benchmark_split(split)


def test_random_split_is_seeded_stable_and_sized() -> None:
    uids = [str(i) for i in range(1000)]
    first = random_split(uids, seed=0)
    assert first == random_split(list(reversed(uids)), seed=0)  # input order does not matter
    assert Counter(first.values()) == {"train": 800, "test": 200}
    assert first != random_split(uids, seed=1)
    grown = random_split([*uids, "1000"], seed=0)  # adding a study moves at most a couple
    assert sum(first[u] != grown[u] for u in uids) <= 2
    assert set(random_split(uids, seed=0, test_fraction=0.0).values()) == {"train"}
    with pytest.raises(ValueError, match="test_fraction"):
        random_split(uids, seed=0, test_fraction=1.5)


def test_generic_reports_csv(tmp_path: Path) -> None:
    path = tmp_path / "truth.csv"
    path.write_text('accession,text\n007,"No effusion."\n8,\n9,Stable cardiomegaly.\n')
    assert read_reports_csv(path, id_column="accession", report_column="text") == {
        "007": "No effusion.",
        "9": "Stable cardiomegaly.",
    }
    with pytest.raises(TruthFormatError, match="'study_id'"):
        read_reports_csv(path)
    path.write_text("study_id,report\n1,\n1,Clear.\n")  # a blank first row still counts
    with pytest.raises(TruthFormatError, match="twice"):
        read_reports_csv(path)


def test_real_iu_csvs_and_the_benchmark_protocol() -> None:
    data = need_iu()
    studies = read_iu(data / "indiana_reports.csv", data / "indiana_projections.csv")
    assert len(studies) == 3851
    assert sum(len(s.images) for s in studies.values()) == 7466
    assert sum(not s.findings for s in studies.values()) == 514
    split = benchmark_split(data / "r2gen_split.csv")
    assert Counter(split.values()) == {"train": 2069, "val": 296, "test": 590}
    # The protocol filter picks exactly the 2,955 studies of the published split.
    assert {u for u, s in studies.items() if is_benchmark_study(s)} == set(split)
    findings = benchmark_findings(studies, split)
    assert len(split_texts(findings, split, "test")) == 590


def test_a_predictions_file_brings_its_confidences(tmp_path: Path) -> None:
    """A `confidence` column (xrq's own files have one) is read for the calibration: blank cells are left
    out, and a value that is not a number from 0 to 1 is an error that names its row."""
    from model.datasets.iu import read_predictions

    good = tmp_path / "p.csv"
    good.write_text("uid,report,confidence\n1,No effusion.,0.75\n2,Clear lungs.,\n3,,0.5\n4,Opacity.,1\n")
    read = read_predictions(good)
    assert read.reports == {"1": "No effusion.", "2": "Clear lungs.", "4": "Opacity."}
    assert read.confidence == {"1": 0.75, "4": 1.0}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uid": "1", "report": "x", "confidence": 0.5}\n'
                   '{"uid": "2", "report": "y", "confidence": "high"}\n')
    with pytest.raises(TruthFormatError, match=r"bad.jsonl:2: confidence 'high' is not a number from 0 to 1"):
        read_predictions(bad)
