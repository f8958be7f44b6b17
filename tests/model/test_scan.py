"""model.imaging.scan: walking a submitted folder, hashing its files and grouping them into studies."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

import pytest

from model.errors import ImageError, ScanError
from model.imaging.images import read_submitted
from model.imaging.scan import GROUP_BY, ScannedStudy, scan_folder
from testing.badfiles import huge_png

REPO = Path(__file__).resolve().parents[2]
IU = REPO / "examples" / "iu"
XRAY = REPO / "tests" / "data" / "xray"
RSNA = REPO / "tests" / "data" / "dicom" / "rsna_pneumonia_cr.dcm"
RSNA_STUDY = "1.2.276.0.7230010.3.1.2.8323329.6904.1517875201.850818"
OUTSIDE = "symbolic link points outside the submitted folder"


def by_key(studies: list[ScannedStudy]) -> dict[tuple[str, str], list[str]]:
    return {(s.grouping, s.uid): [i.relpath for i in s.images] for s in studies}


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


@pytest.fixture(scope="module")
def iu_studies() -> list[ScannedStudy]:
    return scan_folder(IU)


def test_iu_examples_group_by_uid(iu_studies: list[ScannedStudy]) -> None:
    sizes = {s.uid: len(s.images) for s in iu_studies if s.grouping == "iu"}
    assert sizes == {
        "1000": 3, "3": 3, "54": 2, "7": 2, "1002": 2,
        "1001": 1, "1003": 1, "103": 1, "14": 1, "25": 1, "303": 1,
    }  # fmt: skip
    three = next(s for s in iu_studies if s.uid == "3")
    assert [i.relpath for i in three.images] == [
        "3_IM-1384-1001.dcm.png",
        "3_IM-1384-2001.dcm.png",
        "CXR3_IM-1384-1001.png",
    ]
    # Anything else in the folder (a README, say) is a study of its own, to fail at decode time.
    assert all(s.grouping == "image" and len(s.images) == 1 for s in iu_studies if s.grouping != "iu")
    assert iu_studies == sorted(iu_studies, key=lambda s: (s.grouping, s.uid))


def test_images_are_hashed_and_located(iu_studies: list[ScannedStudy]) -> None:
    image = next(s for s in iu_studies if s.uid == "1000").images[0]
    assert image.path == IU / "1000_IM-0003-1001.dcm.png"
    assert image.path.is_absolute()
    assert image.sha256 == hashlib.sha256(image.path.read_bytes()).hexdigest()
    assert image.size_bytes == image.path.stat().st_size
    assert image.error is None


def test_fingerprints_survive_a_copy_elsewhere(tmp_path: Path, iu_studies: list[ScannedStudy]) -> None:
    elsewhere = tmp_path / "deep" / "copy"
    shutil.copytree(IU, elsewhere)
    original = {(s.grouping, s.uid): s.fingerprint for s in iu_studies}
    copied = {(s.grouping, s.uid): s.fingerprint for s in scan_folder(elsewhere)}
    assert copied == original
    assert len(set(original.values())) == len(original)

    with (elsewhere / "7_IM-2263-1001.png").open("wb") as f:  # a new file joins study 7
        f.write((IU / "CXR7_IM-2263-1001.png").read_bytes()[:100])
    changed = {(s.grouping, s.uid): s.fingerprint for s in scan_folder(elsewhere)}
    assert changed[("iu", "7")] != original[("iu", "7")]
    assert {k: v for k, v in changed.items() if k != ("iu", "7")} == {
        k: v for k, v in original.items() if k != ("iu", "7")
    }


def test_image_mode_makes_studies_of_one(tmp_path: Path) -> None:
    copy(IU / "1000_IM-0003-1001.dcm.png", tmp_path / "a" / "1000_IM-0003-1001.dcm.png")
    copy(IU / "CXR7_IM-2263-1001.png", tmp_path / "CXR7_IM-2263-1001.png")
    assert by_key(scan_folder(tmp_path, group_by="image")) == {
        ("image", "CXR7_IM-2263-1001.png"): ["CXR7_IM-2263-1001.png"],
        ("image", "a/1000_IM-0003-1001.dcm.png"): ["a/1000_IM-0003-1001.dcm.png"],
    }


def test_folder_mode(tmp_path: Path) -> None:
    for rel in ("p1/front.png", "p1/side.png", "p2/visit/one.png", "loose.png"):
        copy(XRAY / "00000001_000.png", tmp_path / rel)
    assert by_key(scan_folder(tmp_path, group_by="folder")) == {
        ("folder", "p1"): ["p1/front.png", "p1/side.png"],
        ("folder", "p2/visit"): ["p2/visit/one.png"],
        ("image", "loose.png"): ["loose.png"],
    }


def test_pattern_mode(tmp_path: Path) -> None:
    for rel in ("patient_12/a.png", "patient_12/b.png", "x/patient_7_c.png", "other.png"):
        copy(XRAY / "00000001_000.png", tmp_path / rel)
    expected = {
        ("image", "other.png"): ["other.png"],
        ("pattern", "12"): ["patient_12/a.png", "patient_12/b.png"],
        ("pattern", "7"): ["x/patient_7_c.png"],
    }
    assert by_key(scan_folder(tmp_path, group_by="pattern", pattern=r"patient_(\d+)")) == expected
    named = r"(x/)?patient_(?P<study>\d+)"  # the named group wins over group 1
    assert by_key(scan_folder(tmp_path, group_by="pattern", pattern=named)) == expected


def test_dicoms_group_by_study_instance_uid(tmp_path: Path) -> None:
    copy(RSNA, tmp_path / "first.dcm")
    copy(RSNA, tmp_path / "series" / "IM0002")  # no extension: found by content
    copy(XRAY / "h0001.png", tmp_path / "h0001.png")
    studies = scan_folder(tmp_path)
    assert by_key(studies) == {
        ("dicom", RSNA_STUDY): ["first.dcm", "series/IM0002"],
        ("image", "h0001.png"): ["h0001.png"],
    }
    assert studies[0].images[0].sha256 == studies[0].images[1].sha256


def test_symlinks(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = copy(XRAY / "h0001.png", outside / "secret.png")
    inside = copy(XRAY / "tb0005.png", root / "real.png")
    (root / "out.png").symlink_to(secret)
    (root / "sneaky.png").symlink_to(Path("..") / "outside" / "secret.png")
    (root / "in.png").symlink_to(inside)
    (root / "gone.png").symlink_to(root / "missing.png")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked_inside_dir").symlink_to(root, target_is_directory=True)
    images = {i.relpath: i for s in scan_folder(root) for i in s.images}
    assert sorted(images) == ["gone.png", "in.png", "out.png", "real.png", "sneaky.png"]  # no dirs followed
    for name in ("out.png", "sneaky.png"):
        assert images[name].error == OUTSIDE
        assert images[name].sha256 is None and images[name].size_bytes is None
    assert images["in.png"].error is None
    assert images["in.png"].sha256 == images["real.png"].sha256
    assert images["in.png"].path == root / "in.png"  # as found, not resolved
    assert images["gone.png"].error == "cannot read file: No such file or directory"


def test_fifo_is_listed_but_never_opened(tmp_path: Path) -> None:
    copy(XRAY / "h0001.png", tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    result: list[list[ScannedStudy]] = []
    worker = threading.Thread(target=lambda: result.append(scan_folder(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "scan_folder blocked on a FIFO"
    studies = {s.uid: s for s in result[0]}
    assert studies["pipe.png"].images[0].error == "not a regular file"
    assert studies["pipe.png"].error == "pipe.png: not a regular file"
    assert studies["a.png"].error is None


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    copy(XRAY / "h0001.png", tmp_path / "visible.png")
    copy(XRAY / "h0001.png", tmp_path / ".hidden.png")
    copy(XRAY / "h0001.png", tmp_path / ".git" / "objects" / "x.png")
    copy(XRAY / "h0001.png", tmp_path / "sub" / ".DS_Store")
    assert by_key(scan_folder(tmp_path)) == {("image", "visible.png"): ["visible.png"]}


def test_scan_time_failures_are_studies_of_one(tmp_path: Path) -> None:
    (tmp_path / "1000_IM-0003-1001.dcm.png").write_bytes(b"")  # an IU name, but empty
    copy(IU / "1000_IM-0003-2001.dcm.png", tmp_path / "1000_IM-0003-2001.dcm.png")
    (tmp_path / "notes").write_text("not an image")  # no suffix: listed; fails later, at decode time
    (tmp_path / "notes.txt").write_text("not an image")  # plainly not a picture: ignored (issue 19)
    ignored: list[str] = []
    studies = {(s.grouping, s.uid): s for s in scan_folder(tmp_path, ignored=ignored.append)}
    assert set(studies) == {
        ("image", "1000_IM-0003-1001.dcm.png"),
        ("iu", "1000"),
        ("image", "notes"),
    }
    assert ignored == ["notes.txt"]
    empty = studies[("image", "1000_IM-0003-1001.dcm.png")]
    assert empty.error == "1000_IM-0003-1001.dcm.png: empty file (0 bytes)"
    assert empty.images[0].size_bytes == 0
    assert studies[("image", "notes")].error is None


def test_unreadable_study_fingerprint_uses_relpath_and_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").symlink_to("/etc/hostname")
    (tmp_path / "b.png").symlink_to("/etc/hostname")
    prints = {s.uid: s.fingerprint for s in scan_folder(tmp_path)}
    assert prints["a.png"] != prints["b.png"]
    assert prints == {s.uid: s.fingerprint for s in scan_folder(tmp_path)}


@pytest.mark.parametrize(
    ("root", "group_by", "pattern", "message"),
    [
        ("missing", "auto", None, "not a folder: "),
        ("h0001.png", "auto", None, "not a folder: "),
        (".", "patient", None, "unknown grouping 'patient': use one of auto, image, folder, pattern"),
        (".", "pattern", None, "--group-by pattern needs a --pattern"),
        (".", "pattern", "(unclosed", "bad --pattern '(unclosed': missing )"),
        (".", "pattern", "patient_", "bad --pattern 'patient_': it needs a group"),
        (".", "auto", "(x)", "a --pattern is only used with --group-by pattern"),
    ],
)
def test_scan_errors(tmp_path: Path, root: str, group_by: str, pattern: str | None, message: str) -> None:
    copy(XRAY / "h0001.png", tmp_path / "h0001.png")
    with pytest.raises(ScanError) as caught:
        scan_folder(tmp_path / root, group_by=group_by, pattern=pattern)
    assert str(caught.value).startswith(message)


def test_group_by_choices() -> None:
    assert GROUP_BY == ("auto", "image", "folder", "pattern")


def test_file_over_the_size_limit_fails_at_scan_time_without_being_hashed(tmp_path: Path) -> None:
    copy(XRAY / "h0001.png", tmp_path / "fine.png")
    huge_png(tmp_path / "huge.png", XRAY / "h0001.png")  # 2 GiB, sparse
    studies = {s.uid: s for s in scan_folder(tmp_path)}
    huge = studies["huge.png"].images[0]
    assert huge.error == (
        "file too large: 2,147,483,648 bytes, above the limit of 536,870,912 bytes "
        "(set XRQ_MAX_FILE_BYTES to raise it)"
    )
    assert huge.sha256 is None and huge.size_bytes is None  # not read, so not hashed
    assert studies["fine.png"].error is None

    size = (XRAY / "h0001.png").stat().st_size
    small = {s.uid: s.error for s in scan_folder(tmp_path, max_file_bytes=size - 1)}
    assert small["fine.png"] == (
        f"fine.png: file too large: {size:,} bytes, above the limit of {size - 1:,} bytes "
        "(set XRQ_MAX_FILE_BYTES to raise it)"
    )
    at_limit = {s.uid: s.error for s in scan_folder(tmp_path, max_file_bytes=size)}
    assert at_limit["fine.png"] is None and "huge.png: file too large" in str(at_limit["huge.png"])


def test_scanning_and_workers_refuse_files_with_the_same_reasons(tmp_path: Path) -> None:
    """One file-safety check (model.imaging.files.open_checked) for both: a fix to it reaches both."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = copy(XRAY / "h0001.png", outside / "secret.png")
    copy(XRAY / "tb0005.png", root / "big.png")
    (root / "out.png").symlink_to(secret)
    (root / "gone.png").symlink_to(root / "missing.png")
    os.mkfifo(root / "pipe.png")
    limit = (XRAY / "tb0005.png").stat().st_size - 1
    scanned = {i.relpath: i.error for s in scan_folder(root, max_file_bytes=limit) for i in s.images}
    assert set(scanned) == {"big.png", "out.png", "gone.png", "pipe.png"}
    for relpath, error in scanned.items():
        with pytest.raises(ImageError) as caught:
            read_submitted(root / relpath, root=root, max_file_bytes=limit)
        assert error == caught.value.reason, relpath
    assert scanned["out.png"] == OUTSIDE and scanned["pipe.png"] == "not a regular file"
