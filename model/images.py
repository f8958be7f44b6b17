"""Decode any X-ray file (PNG, JPEG, DICOM, a few others) into an 8-bit grayscale PIL picture.

Why one function: the worker, the preview tools and training all need the same picture from the same
file, whatever its format, bit depth or photometric convention. The format is found from the file's
first bytes, never from its name (IU ships `*.dcm.png` files that are PNGs; DICOMs often have no
extension). Every way a file can be unusable becomes an `ImageError` whose `reason` is a short, stable
sentence, stored with the failed image and shown to the user.

Bit depth: 8-bit pictures are kept as they are. Deeper pixels (16-bit PNG/TIFF, 10-16-bit DICOM, float
TIFF) are mapped linearly to 0..255 between their 0.5th and 99.5th percentiles, clipping outside. A
percentile window rather than min-max because a few extreme pixels (burned-in labels, dead detector
elements, collimator edges) would otherwise squeeze the anatomy into a handful of grey levels. A DICOM
that carries its own display window (VOI LUT or Window Center/Width) is shown through that window, and
the window's output is then stretched min-max to 0..255. MONOCHROME1 DICOMs (low values white) are
inverted so that bones are bright and lungs dark, as in every other format.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from model.errors import ImageError

DEFAULT_MAX_PIXELS: int = 50_000_000
"""Largest picture (width × height) decoded by default; the caller passes the XRQ_MAX_PIXELS setting."""

_HEAD_BYTES = 8192
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (_PNG_MAGIC, "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
)
# The only Pillow plugin each sniffed kind may use: Pillow never guesses among its ~40 formats.
_PIL_FORMAT = dict(
    png="PNG", jpeg="JPEG", tiff="TIFF", bmp="BMP", gif="GIF", jpeg2000="JPEG2000", webp="WEBP"
)
_NAME = {**_PIL_FORMAT, "jpeg2000": "JPEG 2000", "webp": "WebP", "dicom": "DICOM"}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
_DICOM_VRS = set(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST".split()
    + b"SV TM UC UI UL UN UR US UT UV".split()
)
_PERCENTILES = (0.5, 99.5)


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The file's format from its first bytes: 'png', 'jpeg', 'dicom', 'tiff', 'bmp', 'gif', 'jpeg2000',
    'webp', or None when unknown or unreadable. Never decodes anything."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str | None:
    """Like `sniff`, from a file's first bytes (at least 132 for DICOM with its preamble).

    'DICM' after the preamble wins over everything: the preamble may itself hold a TIFF header
    (dual-personality files such as NEMA's RG1_UNCR.dcm), and the TIFF view of such a file lacks the
    DICOM display rules (MONOCHROME1 inversion, window)."""
    if head[128:132] == b"DICM":
        return "dicom"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if _raw_dicom(head):
        return "dicom"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def _raw_dicom(head: bytes) -> bool:
    """True for a DICOM data set written without the 128-byte preamble and 'DICM' (old ACR-NEMA-style
    files): it starts with a group 0002 or 0008 element, then an explicit VR or a small implicit length.
    No text starts with the bytes 02 00 or 08 00, so a text file is never taken for DICOM."""
    if len(head) < 8:
        return False
    group, element = struct.unpack_from("<HH", head)
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    return head[4:6] in _DICOM_VRS or struct.unpack_from("<I", head, 4)[0] < 1024


def decode(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The file's picture as an 8-bit grayscale ('L') PIL image.

    Raises ImageError(reason) for anything unusable: unreadable, empty, text, unknown format, larger
    than `max_pixels` (checked from the header, before any pixel is decoded), truncated or corrupt.
    No other exception escapes for bad content.
    """
    return _decode(path, _read_head(path), os.fspath(path), max_pixels)


def read_submitted(path: str | os.PathLike[str], *, root: str | os.PathLike[str],
                   sha256: str | None = None) -> bytes:
    """A submitted file's bytes, read once, if it is still inside `root` and still holds `sha256`.

    Scanning checked both when the folder was submitted; a worker reads the file hours later, and
    must neither follow a link swapped in since to somewhere else nor report on other content.
    """
    real_root = os.path.realpath(root)
    if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
        raise ImageError("symbolic link points outside the submitted folder")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO can never hang us
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ImageError("not a regular file")
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}", transient=True) from e
    if sha256 is not None and data and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageError("the file changed after it was submitted: submit the folder again")
    return data


def decode_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "") -> Image.Image:
    """`decode` for content already read: a worker reads a file once, checks its hash, decodes it.

    Same rules and reasons as `decode`; `name` is the file's name, kept out of decoder messages.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), data[:_HEAD_BYTES], name or "<bytes>", max_pixels)


def _decode(source: str | os.PathLike[str] | BinaryIO, head: bytes, label: str, max_pixels: int) -> Image.Image:
    kind = sniff_bytes(head)
    if kind is None:
        if _looks_like_text(head):
            raise ImageError("not an image: the file contains text")
        raise ImageError("not a PNG, JPEG or DICOM file")
    try:
        if kind == "dicom":
            return _decode_dicom(source, label, max_pixels)
        return _decode_pillow(source, kind, head, max_pixels)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"not enough memory to decode this {_NAME[kind]} file", transient=True) from None
    except Exception as e:  # the boundary: whatever a decoder throws at bad bytes becomes a reason
        raise ImageError(f"truncated or corrupt {_NAME[kind]} ({_describe(e, label)})") from e


def dicom_study_uid(path: str | os.PathLike[str]) -> str | None:
    """The StudyInstanceUID of a DICOM file, read from the header only (pixel data is never read);
    None when the file is not DICOM, has no such attribute, or cannot be read."""
    try:
        if sniff_bytes(_read_head(path)) != "dicom":
            return None
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["StudyInstanceUID"])
        uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:
        return None
    return uid or None


def _read_head(path: str | os.PathLike[str]) -> bytes:
    """The first bytes of a regular, non-empty file. Opened non-blocking so a FIFO can never hang us."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file")
        if st.st_size == 0:
            raise ImageError("empty file (0 bytes)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            return f.read(_HEAD_BYTES)
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}", transient=True) from e


def _looks_like_text(head: bytes) -> bool:
    """True when the first bytes are text: no NUL byte and almost no control characters. Random or
    binary data has NUL bytes; UTF-8 and Latin-1 text has none."""
    if b"\x00" in head:
        return False
    controls = sum(1 for b in head if b < 0x20 and b not in b"\t\n\r\f\v\x1b\x08")
    return controls <= len(head) // 100


def _describe(e: BaseException, path: str | os.PathLike[str]) -> str:
    """A one-line description of a decoder error, without the file's path (stored separately)."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "the decoder does not recognise it"
    text = str(e).replace(os.fspath(path), os.path.basename(os.fspath(path))).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture larger than max_pixels, before its pixels are decoded."""
    if width * height > max_pixels:
        raise ImageError(_too_large(f"{width}×{height} = {width * height:,}", max_pixels))


def _too_large(size: str, max_pixels: int) -> str:
    return (
        f"image too large: {size} pixels, above the limit of {max_pixels:,} (set XRQ_MAX_PIXELS to raise it)"
    )


def _bomb_reason(kind: str, head: bytes, error: Exception, max_pixels: int) -> str:
    """The reason for a picture Pillow itself refused as a decompression bomb. Pillow's own limit
    (Image.MAX_IMAGE_PIXELS, left untouched: it is process-wide and workers decode in threads)
    can be below a raised XRQ_MAX_PIXELS; the message then names Pillow's limit."""
    limit = Image.MAX_IMAGE_PIXELS or max_pixels
    if kind == "png" and head[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", head, 16)
        size = f"{width}×{height} = {width * height:,}"
    else:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)):,}" if found else "more than"
    if max_pixels <= limit:
        return _too_large(size, max_pixels)
    return f"image too large: {size} pixels, above the decoder's safety limit of {limit:,}"


def _decode_pillow(path: str | os.PathLike[str] | BinaryIO, kind: str, head: bytes, max_pixels: int) -> Image.Image:
    """Decode with Pillow, restricted to the sniffed format; the size is checked on the lazily opened
    header before `load()` decodes any pixel."""
    try:
        im = Image.open(path, formats=[_PIL_FORMAT[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(_bomb_reason(kind, head, e, max_pixels)) from e
    try:
        _check_size(im.width, im.height, max_pixels)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # a photographed film may carry a rotation tag
        return _to_gray(im)
    finally:
        im.close()


def _to_gray(im: Image.Image) -> Image.Image:
    """A new 'L' image from any Pillow mode: deep grays windowed, colour to luma, alpha dropped (the
    colour channels are the stored picture; X-ray files with alpha are opaque in practice)."""
    if im.mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16S..., F: deeper than 8 bits
        return Image.fromarray(_auto_window(np.asarray(im)), "L")
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV...
    return im.convert("L")


def _decode_dicom(path: str | os.PathLike[str] | BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Decode the first frame of a DICOM file through pydicom, respecting its display conventions.
    Large elements are read lazily, so an oversized image is refused before its pixel data is read."""
    try:
        ds = pydicom.dcmread(path, force=True, defer_size="64 KB")
    except Exception as e:
        raise ImageError(f"not a valid DICOM file ({_describe(e, label)})") from e
    if len(ds) == 0:  # pydicom gives up silently on an element cut short by the end of the file
        raise ImageError("truncated or corrupt DICOM (no data elements could be read)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageError("DICOM file without pixel data")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or cols <= 0:
        raise ImageError("DICOM file without an image size (Rows and Columns)")
    _check_size(cols, rows, max_pixels)
    if int(ds.get("NumberOfFrames") or 1) > 1:
        ds.pixel_array_options(index=0)  # decode only the first frame
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ImageError(f"cannot decode the DICOM pixel data ({_describe(e, label)})") from e
    return Image.fromarray(_dicom_to_8bit(_first_frame(arr, ds), ds), "L")


def _first_frame(arr: np.ndarray, ds: Any) -> np.ndarray:
    """(rows, cols) or (rows, cols, samples): drop a leading frame axis if the decoder kept one."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if arr.ndim == (3 if samples == 1 else 4):
        arr = arr[0]
    return arr


def _dicom_to_8bit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Grey levels 0..255 (bones bright) from a DICOM frame: colour to luma; modality LUT, then the
    file's VOI window if any (else the percentile window); MONOCHROME1 inverted."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # pydicom already converted YBR to RGB
        luma = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if arr.dtype == np.uint8:
            return np.clip(luma + 0.5, 0, 255).astype(np.uint8)
        return _auto_window(luma)
    out = _voi_window(arr, ds)
    if out is None:
        out = arr if arr.dtype == np.uint8 else _auto_window(apply_modality_lut(arr, ds))
    return 255 - out if photometric == "MONOCHROME1" else out


def _voi_window(arr: np.ndarray, ds: Any) -> np.ndarray | None:
    """The picture through the file's own VOI LUT or window, stretched to 0..255; None when the file
    has none or it is unusable (e.g. a zero width), so the caller falls back to the percentile window."""
    if "VOILUTSequence" not in ds and not ("WindowCenter" in ds and "WindowWidth" in ds):
        return None
    try:
        shown = np.asarray(apply_voi_lut(apply_modality_lut(arr, ds), ds), dtype=np.float64)
    except Exception:
        return None
    lo, hi = float(shown.min()), float(shown.max())
    return _window(shown, lo, hi) if hi > lo else None


def _auto_window(arr: np.ndarray) -> np.ndarray:
    """Map deep grey levels to 0..255 between the 0.5th and 99.5th percentiles (min-max if those
    coincide); see the module docstring for why."""
    values = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v) for v in np.percentile(values, _PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return _window(values, lo, hi)


def _window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255, clipped; a constant picture becomes black."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
