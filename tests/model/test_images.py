"""model.imaging.images: every real X-ray decodes to a sensible 8-bit picture; every bad file gives a reason."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import struct
import threading
import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from model.errors import ImageError
from model.imaging.files import DEFAULT_MAX_FILE_BYTES
from model.imaging.images import DEFAULT_MAX_PIXELS, decode, decode_bytes, dicom_study_uid, read_submitted, sniff
from testing.badfiles import huge_png

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

# sha256 (first 16 hex digits) of each file's pixels as decoded before decoding went through tables of
# grey levels (model/images.py at 2c3e58f, now model/imaging/images.py): not one pixel may change.
DECODED_SHA256 = {
    "examples/iu/1000_IM-0003-1001.dcm.png": "79547c008ca66890",
    "examples/iu/1000_IM-0003-2001.dcm.png": "3e47e8198d68876e",
    "examples/iu/1000_IM-0003-3001.dcm.png": "6e5bf04b049b6f7e",
    "examples/iu/1001_IM-0004-1001.dcm.png": "32da1b06130a3530",
    "examples/iu/1002_IM-0004-1001.dcm.png": "43fe3538b90d6158",
    "examples/iu/1002_IM-0004-2001.dcm.png": "47470fb143d15637",
    "examples/iu/1003_IM-0005-2002.dcm.png": "b354b37bd5ea066e",
    "examples/iu/103_IM-0023-1001.dcm.png": "be3994a74d9b1887",
    "examples/iu/14_IM-0256-2001.dcm.png": "d2d4cefe0a7f31be",
    "examples/iu/3_IM-1384-1001.dcm.png": "d5de78ce1bd3c882",
    "examples/iu/3_IM-1384-2001.dcm.png": "7a387c311b7a9b81",
    "examples/iu/CXR25_IM-1024-2001.png": "c4ac2c92fda00c71",
    "examples/iu/CXR303_IM-1404-1001.png": "e1218b2f840f8c5d",
    "examples/iu/CXR3_IM-1384-1001.png": "4a5686a6c73e84e5",
    "examples/iu/CXR54_IM-2145-1001.png": "66b5007df2bd64bf",
    "examples/iu/CXR54_IM-2145-1002.png": "8db774ec97adfd84",
    "examples/iu/CXR7_IM-2263-1001.png": "936efec5aaf1d709",
    "examples/iu/CXR7_IM-2263-2001.png": "499cdf91e805cf25",
    "tests/data/xray/00000001_000.png": "fdc4ee87b712cfcd",
    "tests/data/xray/00000013_004.png": "7174a58206c69a80",
    "tests/data/xray/h0001.png": "74693ca02b5ccba2",
    "tests/data/xray/tb0005.png": "eaa2dbe75fdbc81f",
    "tests/data/dicom/RG1_J2KR.dcm": "0aeeaad25dbce6a3",
    "tests/data/dicom/RG1_UNCR.dcm": "0aeeaad25dbce6a3",
    "tests/data/dicom/rsna_pneumonia_cr.dcm": "938432fbb18d79f4",
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


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


def test_every_real_file_decodes_to_the_same_pixels_as_before() -> None:
    assert set(DECODED_SHA256) == set(SIZES)
    assert {relpath: digest(decoded(REPO / relpath)) for relpath in SIZES} == DECODED_SHA256


# The same for deep pictures made from RG1 (only RG1's window path is among the real files), one per
# way of windowing: a change of windowing code that moves one grey level fails here.
DEEP_SHA256 = {
    "rg1_16bit.png": "2f035e8627c20ddf",
    "small_16bit.png": "4a5555bb24a2bb3c",
    "rg1_int32.tif": "cef24e34b0f8dada",
    "noise_int32.tif": "7bdecf6064f2efb2",
    "rg1_float.tif": "fe06a3520197d55c",
    "rg1_no_window.dcm": "2f035e8627c20ddf",
    "rg1_rescaled.dcm": "2f035e8627c20ddf",
    "rg1_window_rescaled.dcm": "016a0ef4731675ad",
    "rg1_voi_lut.dcm": "e5f375eacd58ecb2",
    "rg1_signed.dcm": "2f035e8627c20ddf",
    "rg1_rgb16.dcm": "172015796ba3f6a9",
}


def deep_examples(folder: Path) -> dict[str, Path]:
    """{name: path} of deep pictures covering each way `decode` maps more than 8 bits to 8."""
    stored = pydicom.dcmread(RG1_UNCR).pixel_array  # (1955, 1841) uint16, 15 bits used
    paths: dict[str, Path] = {}

    def pil(name: str, image: Image.Image) -> None:
        paths[name] = folder / name
        image.save(paths[name])

    pil("rg1_16bit.png", Image.fromarray(stored.max() - stored))
    pil("small_16bit.png", Image.open(SMALL_PNG).convert("L").convert("I;16"))
    pil("rg1_int32.tif", Image.fromarray(stored.astype(np.int32) - 20000))
    noise = np.random.default_rng(1).integers(-(2**30), 2**30, size=(300, 400), dtype=np.int32)
    pil("noise_int32.tif", Image.fromarray(noise))  # too many levels for a table
    floats = stored.astype(np.float32) * np.float32(0.37) - np.float32(100.0)
    floats[:5, :7], floats[10, :3], floats[11, :3] = np.nan, np.inf, -np.inf
    pil("rg1_float.tif", Image.fromarray(floats))

    def no_window(ds: pydicom.Dataset) -> None:
        del ds.WindowCenter, ds.WindowWidth

    def rescaled(ds: pydicom.Dataset) -> None:
        no_window(ds)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"

    def window_rescaled(ds: pydicom.Dataset) -> None:
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"

    def voi_lut(ds: pydicom.Dataset) -> None:
        no_window(ds)
        item = pydicom.Dataset()
        item.add_new(0x00283002, "US", [32768, 0, 16])  # LUT Descriptor
        item.add_new(0x00283006, "OW", (np.sqrt(np.arange(32768)) * 362).astype("<u2").tobytes())  # LUT Data
        ds.VOILUTSequence = pydicom.Sequence([item])

    def signed(ds: pydicom.Dataset) -> None:
        no_window(ds)
        ds.PixelRepresentation = 1
        ds.PixelData = (stored.astype(np.int32) - 16384).astype("<i2").tobytes()

    def rgb16(ds: pydicom.Dataset) -> None:
        no_window(ds)
        crop = stored[600:900, 500:900].astype(np.int32)
        ds.PixelData = np.stack([crop, crop // 2, 32767 - crop], axis=-1).astype("<u2").tobytes()
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 300, 400, 3
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0

    change: Callable[[pydicom.Dataset], None]
    for change in (no_window, rescaled, window_rescaled, voi_lut, signed, rgb16):
        ds = pydicom.dcmread(RG1_UNCR)
        change(ds)
        paths[f"rg1_{change.__name__}.dcm"] = folder / f"rg1_{change.__name__}.dcm"
        ds.save_as(paths[f"rg1_{change.__name__}.dcm"])
    return paths


def test_deep_pictures_decode_to_the_same_pixels_as_before(tmp_path: Path) -> None:
    found = {name: digest(np.asarray(decode(path))) for name, path in deep_examples(tmp_path).items()}
    assert found == DEEP_SHA256


def test_decoding_a_16_bit_picture_costs_a_few_bytes_a_pixel(tmp_path: Path) -> None:
    """Python and numpy allocations at the peak of a decode (Pillow's own are not traced): the float64
    way took 23 bytes a pixel here, the picture's own copy and the output take 3."""
    pixels = np.random.default_rng(0).integers(0, 4096, (3000, 3000)).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png", compress_level=1)
    header = pydicom.dcmread(RG1_UNCR)
    header.Rows = header.Columns = 3000
    header.PixelData = pixels.tobytes()
    header.save_as(tmp_path / "deep.dcm")
    for name in ("deep.png", "deep.dcm"):
        tracemalloc.start()
        try:
            decode(tmp_path / name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak / pixels.size < 5, (name, peak / pixels.size)


def test_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    assert DEFAULT_MAX_FILE_BYTES == 512 * 1024 * 1024
    path = huge_png(tmp_path / "huge.png", SMALL_PNG)  # a valid PNG, then 2 GiB of zeros (sparse)
    expected = (
        "file too large: 2,147,483,648 bytes, above the limit of 536,870,912 bytes "
        "(set XRQ_MAX_FILE_BYTES to raise it)"
    )
    assert reason(path) == expected
    with pytest.raises(ImageError) as caught:
        read_submitted(path, root=tmp_path)
    assert caught.value.reason == expected and not caught.value.transient
    # Above a raised limit the PNG decodes, and decode reads only up to its end, not the zeros.
    assert np.array_equal(np.asarray(decode(path, max_file_bytes=3 << 30)), decoded(SMALL_PNG))


def test_max_file_bytes_is_the_same_rule_everywhere(tmp_path: Path) -> None:
    data = SMALL_PNG.read_bytes()
    (tmp_path / "small.png").write_bytes(data)
    limit = len(data) - 1
    expected = f"file too large: {len(data):,} bytes, above the limit of {limit:,} bytes"
    assert reason(tmp_path / "small.png", max_file_bytes=limit).startswith(expected)
    for call in (lambda: read_submitted(tmp_path / "small.png", root=tmp_path, max_file_bytes=limit),
                 lambda: decode_bytes(data, max_file_bytes=limit)):
        with pytest.raises(ImageError) as caught:
            call()
        assert caught.value.reason.startswith(expected)
    assert read_submitted(tmp_path / "small.png", root=tmp_path, max_file_bytes=len(data)) == data
    assert decode_bytes(data, max_file_bytes=len(data)).size == (512, 512)


def phi_dicom(folder: Path) -> Path:
    """RSNA's DICOM with a fake patient's name in its UIDs: invalid UI values, which pydicom's validation
    quotes in its warnings and log records."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(RSNA)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = "1.2.840.SMITH.JANE.MRN12"
        ds.save_as(folder / "phi.dcm")
    return folder / "phi.dcm"


def test_nothing_from_a_dicom_header_reaches_warnings_logs_or_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = phi_dicom(tmp_path)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(RG1_UNCR.read_bytes()[:3_000_000])  # pydicom warns: end of file reached
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # what writing the file logged
    capfd.readouterr()
    filters, level = list(warnings.filters), logging.getLogger("pydicom").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dicom_study_uid(path) == "1.2.840.SMITH.JANE.MRN12"  # what the database stores
        assert np.asarray(decode(path)).shape == (1024, 1024)
        with pytest.raises(ImageError):
            decode(truncated)
    assert [str(w.message) for w in caught] == []
    assert caplog.records == []
    assert capfd.readouterr() == ("", "")
    assert warnings.filters == filters and logging.getLogger("pydicom").level == level  # all restored


def test_pydicom_stays_quiet_when_threads_read_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Warning filters are process-wide: a thread that restored them under another's read would let
    that read's warnings out."""
    path = phi_dicom(tmp_path)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    uids: list[str | None] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=lambda: uids.extend(dicom_study_uid(path) for _ in range(20)))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert uids == ["1.2.840.SMITH.JANE.MRN12"] * 160
    assert [str(w.message) for w in caught] == [] and caplog.records == []


def test_broken_jpeg_2000_names_the_decoders_errors(tmp_path: Path) -> None:
    data = bytearray(RG1_J2KR.read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    data[start + 4 : start + 44] = b"\xa5" * 40  # SIZ: the image and tile sizes
    (tmp_path / "broken.dcm").write_bytes(bytes(data))
    text = reason(tmp_path / "broken.dcm")
    assert text.startswith("cannot decode the DICOM pixel data (pylibjpeg: "), text
    assert "\n" not in text and " at 0x" not in text and "all available plugins" not in text


def test_every_reason_is_one_line(tmp_path: Path) -> None:
    data = RG1_J2KR.read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    (tmp_path / "half.png").write_bytes(SMALL_PNG.read_bytes()[:3000])
    (tmp_path / "noise.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(5000))
    for name in ("half.dcm", "half.png", "noise.dcm"):
        text = reason(tmp_path / name)
        assert "\n" not in text and "\r" not in text and len(text) <= 400, text
