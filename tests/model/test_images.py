"""model.images: every real X-ray decodes to a sensible 8-bit picture; every bad file gives a reason."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from model.errors import ImageError
from model.images import DEFAULT_MAX_PIXELS, decode, dicom_study_uid, sniff

REPO = Path(__file__).resolve().parents[2]
DICOM = REPO / "tests" / "data" / "dicom"
RG1_UNCR, RG1_J2KR, RSNA = DICOM / "RG1_UNCR.dcm", DICOM / "RG1_J2KR.dcm", DICOM / "rsna_pneumonia_cr.dcm"
RG1_STUDY = "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
SMALL_PNG = REPO / "examples" / "iu" / "CXR7_IM-2263-1001.png"  # 512×512 RGB, a frontal view
BIG_PNG = REPO / "examples" / "iu" / "1000_IM-0003-1001.dcm.png"  # 2048×2496, 8-bit gray

# (width, height) of every real file in the repository.
SIZES = {
    "examples/iu/1000_IM-0003-1001.dcm.png": (2048, 2496),
    "examples/iu/1000_IM-0003-2001.dcm.png": (2048, 2496),
    "examples/iu/1000_IM-0003-3001.dcm.png": (2048, 2496),
    "examples/iu/1001_IM-0004-1001.dcm.png": (2160, 2048),
    "examples/iu/1002_IM-0004-1001.dcm.png": (2496, 2048),
    "examples/iu/1002_IM-0004-2001.dcm.png": (2048, 2496),
    "examples/iu/1003_IM-0005-2002.dcm.png": (2048, 2496),
    "examples/iu/103_IM-0023-1001.dcm.png": (2048, 2496),
    "examples/iu/14_IM-0256-2001.dcm.png": (2051, 2048),
    "examples/iu/3_IM-1384-1001.dcm.png": (2048, 2048),
    "examples/iu/3_IM-1384-2001.dcm.png": (2048, 2048),
    "examples/iu/CXR25_IM-1024-2001.png": (512, 512),
    "examples/iu/CXR303_IM-1404-1001.png": (512, 492),
    "examples/iu/CXR3_IM-1384-1001.png": (512, 512),
    "examples/iu/CXR54_IM-2145-1001.png": (512, 362),
    "examples/iu/CXR54_IM-2145-1002.png": (512, 633),
    "examples/iu/CXR7_IM-2263-1001.png": (512, 512),
    "examples/iu/CXR7_IM-2263-2001.png": (512, 512),
    "tests/data/xray/00000001_000.png": (512, 512),
    "tests/data/xray/00000013_004.png": (1024, 1024),
    "tests/data/xray/h0001.png": (512, 512),
    "tests/data/xray/tb0005.png": (512, 512),
    "tests/data/dicom/RG1_UNCR.dcm": (1841, 1955),
    "tests/data/dicom/RG1_J2KR.dcm": (1841, 1955),
    "tests/data/dicom/rsna_pneumonia_cr.dcm": (1024, 1024),
}


@functools.cache
def decoded(path: Path) -> np.ndarray:
    """Each real file is decoded once per test run (the big PNGs take a while)."""
    image = decode(path)
    assert image.mode == "L"
    return np.asarray(image)


def reason(path: Path, **kwargs: int) -> str:
    with pytest.raises(ImageError) as caught:
        decode(path, **kwargs)
    return caught.value.reason


def assert_sensible(pixels: np.ndarray) -> None:
    """A real radiograph: many grey levels, spread out, neither black nor white overall."""
    assert len(np.unique(pixels)) > 100
    assert pixels.std() > 25
    assert 40 < pixels.mean() < 215


def lungs_darker_than_spine(pixels: np.ndarray) -> float:
    """For a frontal chest view: mean of the central vertical strip (spine, mediastinum) minus the mean
    of the two upper lung fields. Positive when bones are bright and lungs dark."""
    h, w = pixels.shape
    rows = slice(int(h * 0.25), int(h * 0.55))
    spine = pixels[rows, int(w * 0.45) : int(w * 0.55)].mean()
    lungs = np.concatenate(
        [pixels[rows, int(w * 0.2) : int(w * 0.35)], pixels[rows, int(w * 0.65) : int(w * 0.8)]], axis=1
    ).mean()
    return float(spine - lungs)


def test_every_file_is_listed() -> None:
    found = {
        p.relative_to(REPO).as_posix()
        for folder in ("examples/iu", "tests/data/xray", "tests/data/dicom")
        for p in (REPO / folder).iterdir()
        if p.suffix in (".png", ".dcm")
    }
    assert found == set(SIZES)


@pytest.mark.parametrize("relpath", sorted(SIZES))
def test_real_file_decodes(relpath: str) -> None:
    pixels = decoded(REPO / relpath)
    assert pixels.shape == SIZES[relpath][::-1]
    assert_sensible(pixels)


FRONTAL = [
    "tests/data/dicom/RG1_UNCR.dcm",
    "tests/data/dicom/RG1_J2KR.dcm",
    "tests/data/dicom/rsna_pneumonia_cr.dcm",
    "examples/iu/1000_IM-0003-1001.dcm.png",
    "examples/iu/1003_IM-0005-2002.dcm.png",
    "examples/iu/3_IM-1384-1001.dcm.png",
    "examples/iu/CXR3_IM-1384-1001.png",
    "examples/iu/CXR7_IM-2263-1001.png",
    "tests/data/xray/00000001_000.png",
    "tests/data/xray/h0001.png",
]


@pytest.mark.parametrize("relpath", FRONTAL)
def test_frontal_views_have_bright_bones_and_dark_lungs(relpath: str) -> None:
    # RG1 is MONOCHROME1 (stored inverted): only the decoder's inversion makes it pass.
    assert lungs_darker_than_spine(decoded(REPO / relpath)) > 30


def test_monochrome1_is_inverted_relative_to_stored_values() -> None:
    stored = pydicom.dcmread(RG1_UNCR).pixel_array.astype(np.float64)
    assert np.corrcoef(stored.ravel(), decoded(RG1_UNCR).ravel())[0, 1] < -0.95


def test_rg1_uncompressed_and_jpeg2000_give_identical_pixels() -> None:
    assert np.array_equal(decoded(RG1_UNCR), decoded(RG1_J2KR))


def test_rg1_is_dicom_although_its_preamble_is_a_tiff_header() -> None:
    assert RG1_UNCR.read_bytes()[:4] == b"II*\x00"
    assert sniff(RG1_UNCR) == "dicom"
    assert sniff(RG1_J2KR) == "dicom"
    assert sniff(SMALL_PNG) == "png"


def test_dicom_without_extension_decodes(tmp_path: Path) -> None:
    copy = tmp_path / "IM0001"
    shutil.copyfile(RSNA, copy)
    assert np.array_equal(np.asarray(decode(copy)), decoded(RSNA))


def test_dicom_without_preamble_decodes(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(RSNA.read_bytes()[132:])  # drop the 128-byte preamble and "DICM"
    assert sniff(raw) == "dicom"
    assert np.array_equal(np.asarray(decode(raw)), decoded(RSNA))


def test_16_bit_png_is_windowed_to_8_bits(tmp_path: Path) -> None:
    stored = pydicom.dcmread(RG1_UNCR).pixel_array  # uint16, 15 bits used
    path = tmp_path / "rg1.png"
    Image.fromarray(stored.max() - stored).save(path)  # MONOCHROME2 now: a plain 16-bit gray PNG
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    pixels = np.asarray(decode(path))
    assert pixels.shape == stored.shape
    assert pixels.min() == 0 and pixels.max() == 255  # the percentile window uses the whole range
    assert_sensible(pixels)
    assert np.corrcoef(pixels.ravel(), decoded(RG1_UNCR).ravel())[0, 1] > 0.95


def test_jpeg_decodes_whatever_its_name(tmp_path: Path) -> None:
    source = decoded(SMALL_PNG)
    path = tmp_path / "scan.png"  # a JPEG with the wrong extension
    Image.fromarray(source).save(path, format="JPEG", quality=95)
    assert sniff(path) == "jpeg"
    pixels = np.asarray(decode(path))
    assert pixels.shape == source.shape
    assert np.abs(pixels.astype(int) - source).mean() < 3


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "1", "I;16"])
def test_other_png_modes_give_gray(tmp_path: Path, mode: str) -> None:
    gray = Image.fromarray(decoded(SMALL_PNG))
    path = tmp_path / f"{mode.replace(';', '')}.png"
    gray.convert(mode).save(path)
    pixels = np.asarray(decode(path))
    assert pixels.shape == (512, 512)
    if mode == "I;16":  # deep gray: windowed, so a linear stretch of the original
        assert np.corrcoef(pixels.ravel(), decoded(SMALL_PNG).ravel())[0, 1] > 0.99
        return
    if mode == "1":  # dithered black and white: only the overall brightness survives
        assert set(np.unique(pixels)) == {0, 255}
        assert abs(pixels.mean() - decoded(SMALL_PNG).mean()) < 3
        return
    tolerance = 8 if mode == "P" else 1  # a palette is quantised
    assert np.abs(pixels.astype(int) - decoded(SMALL_PNG)).mean() < tolerance


def test_tiff_and_bmp_are_accepted(tmp_path: Path) -> None:
    for fmt in ("TIFF", "BMP"):
        path = tmp_path / f"image.{fmt.lower()}"
        Image.fromarray(decoded(SMALL_PNG)).save(path, format=fmt)
        assert np.array_equal(np.asarray(decode(path)), decoded(SMALL_PNG))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert reason(tmp_path / "empty.png") == "empty file (0 bytes)"


def test_truncated_png(tmp_path: Path) -> None:
    data = SMALL_PNG.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    assert reason(tmp_path / "half.png").startswith("truncated or corrupt PNG (")


def test_random_bytes_named_png(tmp_path: Path) -> None:
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(4096))
    assert reason(tmp_path / "noise.png") == "not a PNG, JPEG or DICOM file"


def test_text_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("Findings: the lungs are clear.\nNo effusion.\n", encoding="utf-8")
    assert reason(tmp_path / "notes.png") == "not an image: the file contains text"


def png_bomb(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width×height whose zeros compress to almost nothing (never allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    squeeze = zlib.compressobj(9)
    rows = (b"\x00" * (1 + (width + 7) // 8)) * 1000
    idat = b"".join(squeeze.compress(rows) for _ in range(height // 1000)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    png_bomb(path, 30000, 30000)
    assert path.stat().st_size < 200_000
    limit_before = Image.MAX_IMAGE_PIXELS
    assert reason(path) == (
        "image too large: 30000×30000 = 900,000,000 pixels, above the limit of 50,000,000 "
        "(set XRQ_MAX_PIXELS to raise it)"
    )
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_bomb_warning_turned_into_error_is_still_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    png_bomb(path, 10000, 10000)  # above Pillow's warning threshold, below its hard limit
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert reason(path).startswith("image too large: 10000×10000 = 100,000,000 pixels")


def test_max_pixels_is_checked_before_decoding() -> None:
    assert DEFAULT_MAX_PIXELS == 50_000_000
    assert reason(BIG_PNG, max_pixels=1_000_000) == (
        "image too large: 2048×2496 = 5,111,808 pixels, above the limit of 1,000,000 "
        "(set XRQ_MAX_PIXELS to raise it)"
    )
    assert reason(RG1_J2KR, max_pixels=1_000_000).startswith("image too large: 1841×1955 = 3,599,155 pixels")


def test_dicom_header_without_pixel_data(tmp_path: Path) -> None:
    header = pydicom.dcmread(RSNA, stop_before_pixels=True)
    header.save_as(tmp_path / "header.dcm")
    assert reason(tmp_path / "header.dcm") == "DICOM file without pixel data"


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
def test_truncated_dicoms(tmp_path: Path) -> None:
    for source in (RSNA, RG1_UNCR):
        data = source.read_bytes()
        (tmp_path / source.name).write_bytes(data[: len(data) // 2])
        text = reason(tmp_path / source.name)
        assert text.startswith(("truncated or corrupt DICOM", "cannot decode the DICOM pixel data")), text


def test_unreadable_paths(tmp_path: Path) -> None:
    assert reason(tmp_path / "missing.png") == "cannot read file: No such file or directory"
    assert reason(tmp_path) == "not a regular file"
    os.mkfifo(tmp_path / "fifo.png")
    assert reason(tmp_path / "fifo.png") == "not a regular file"  # and it did not block


def test_dicom_study_uid(tmp_path: Path) -> None:
    assert dicom_study_uid(RG1_UNCR) == RG1_STUDY
    assert dicom_study_uid(RG1_J2KR) == RG1_STUDY
    assert dicom_study_uid(SMALL_PNG) is None
    assert dicom_study_uid(tmp_path / "missing.dcm") is None
    header = pydicom.dcmread(RSNA, stop_before_pixels=True)
    del header.StudyInstanceUID
    header.save_as(tmp_path / "no_uid.dcm")
    assert dicom_study_uid(tmp_path / "no_uid.dcm") is None


def shared_data() -> Path | None:
    for candidate in (Path("/work/shared/data"), REPO.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def test_every_shared_image_decodes() -> None:
    root = shared_data()
    if root is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the shared real data folder is missing in CI")
        pytest.skip("no shared data folder on this machine")
    files = sorted(p for sub in ("iu/images", "xray", "dicom") for p in (root / sub).glob("*") if p.is_file())
    assert len(files) >= 20
    for path in files:
        pixels = decoded(path)
        assert_sensible(pixels)
