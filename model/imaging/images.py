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

Memory: a decode costs a few bytes a pixel, not tens: `model.imaging.greylevels` windows an integer picture
through a table of its grey levels (see there), and Pillow's copy of a deep picture is dropped before.

Files are opened through `model.imaging.files.open_checked` (the one file-safety check, scanning's too) and
decoded from the file checked, never reopened by name. pydicom reads under `_QUIET_PYDICOM`: its
warnings quote header values verbatim.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import sys
import threading
import warnings
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image, ImageOps
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from model.errors import ImageError
from model.imaging.files import DEFAULT_MAX_FILE_BYTES, file_too_large, open_checked, read_error
from model.imaging.greylevels import auto_window, luma, stretch

DEFAULT_MAX_PIXELS: int = 50_000_000
"""Largest picture (width × height) decoded by default; the caller passes the XRQ_MAX_PIXELS setting."""

_HEAD_BYTES = 8192
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
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
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


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


def decode(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
           max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Image.Image:
    """The file's picture as an 8-bit grayscale ('L') PIL image.

    Raises ImageError(reason) for anything unusable: unreadable, empty, larger than `max_file_bytes`,
    text, unknown format, larger than `max_pixels` (checked from the header, before any pixel is
    decoded), truncated or corrupt. No other exception escapes for bad content.
    """
    with open_checked(path, max_file_bytes=max_file_bytes) as (f, size):
        if size == 0:
            raise ImageError("empty file (0 bytes)")
        try:
            head = f.read(_HEAD_BYTES)
            f.seek(0)
        except OSError as e:
            raise read_error(e) from e
        return _decode(f, head, os.fspath(path), max_pixels)  # decoded from the file checked, not its name


def read_submitted(path: str | os.PathLike[str], *, root: str | os.PathLike[str], sha256: str | None = None,
                   max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """A submitted file's bytes, read once, if it is still inside `root`, still a regular file no larger
    than `max_file_bytes`, and still holds `sha256`.

    Scanning checked all that when the folder was submitted; a worker reads the file hours later, and
    must neither follow a link swapped in since to somewhere else, nor read a file grown since past the
    limit, nor report on other content.
    """
    with open_checked(path, root=root, max_file_bytes=max_file_bytes) as (f, size):
        try:
            data = f.read(size + 1)
            if len(data) > size:  # it grew since it was measured: read on, never past the limit
                data += f.read(max_file_bytes + 1 - len(data))
        except OSError as e:
            raise read_error(e) from e
    if len(data) > max_file_bytes:
        raise ImageError(file_too_large(f"more than {max_file_bytes:,}", max_file_bytes))
    if sha256 is not None and data and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageError("the file changed after it was submitted: submit the folder again")
    return data


def decode_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "",
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Image.Image:
    """`decode` for content already read: a worker reads a file once, checks its hash, decodes it.

    Same rules and reasons as `decode`; `name` is the file's name, kept out of decoder messages.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    if len(data) > max_file_bytes:
        raise ImageError(file_too_large(f"{len(data):,}", max_file_bytes))
    return _decode(io.BytesIO(data), data[:_HEAD_BYTES], name or "<bytes>", max_pixels)


def _decode(source: BinaryIO, head: bytes, label: str, max_pixels: int) -> Image.Image:
    kind = sniff_bytes(head)
    if kind is None:
        if _looks_like_text(head):
            raise ImageError("not an image: the file contains text")
        raise ImageError("not a PNG, JPEG or DICOM file")
    try:
        if kind == "dicom":
            with _QUIET_PYDICOM:
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
        with open_checked(path, max_file_bytes=sys.maxsize) as (f, _):  # the header only: any size
            if sniff_bytes(f.read(_HEAD_BYTES)) != "dicom":
                return None
            f.seek(0)
            with _QUIET_PYDICOM:
                ds = pydicom.dcmread(_Unnamed(f), stop_before_pixels=True, force=True,
                                     specific_tags=["StudyInstanceUID"])
                uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:
        return None
    return uid or None


class _QuietPydicom:
    """Silences pydicom's warnings and log records while it reads: its validation messages quote header
    values verbatim (a malformed UID can hold a patient's name), and nothing from a header but what
    the database stores may reach a worker's log.

    Warning filters and logger levels are process-wide, and decode workers are threads: the first
    thread in silences, the last one out restores, so no thread restores them under another's read.
    Meanwhile warnings from other threads are silenced too: the price of the warnings module's
    global state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple[warnings.catch_warnings[None], int] | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                caught = warnings.catch_warnings()
                caught.__enter__()
                warnings.simplefilter("ignore")
                logger = logging.getLogger("pydicom")  # its modules log to it or to children of it
                self._saved = (caught, logger.level)
                logger.setLevel(logging.CRITICAL + 1)
            self._depth += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._saved is not None:
                caught, level = self._saved
                logging.getLogger("pydicom").setLevel(level)
                caught.__exit__(None, None, None)
                self._saved = None


_QUIET_PYDICOM = _QuietPydicom()


class _Unnamed:
    """An open file without its name: pydicom reopens a named file by its name to read deferred elements
    (the pixel data), which would bypass the checks the open file passed."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read(self, size: int = -1, /) -> bytes:
        return self._f.read(size)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


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
    text = str(e).replace(os.fspath(path), os.path.basename(os.fspath(path)))
    return _one_line(text) or type(e).__name__


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ (?:object at 0x[0-9a-fA-F]+|name=[^>]*)>")
_ALL_PLUGINS = "Unable to decode as exceptions were raised by all available plugins:"


def _one_line(text: str) -> str:
    """Any message as one line: lines joined with '; ', object addresses dropped, at most 300 characters.
    pydicom's 'all plugins failed' header is dropped, so the plugins' own errors (the cause) remain."""
    text = _OBJECT_REPR.sub("", text.replace(_ALL_PLUGINS, ""))
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= 300 else line[:299] + "…"


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


def _decode_pillow(source: BinaryIO, kind: str, head: bytes, max_pixels: int) -> Image.Image:
    """Decode with Pillow, restricted to the sniffed format; the size is checked on the lazily opened
    header before `load()` decodes any pixel."""
    try:
        im = Image.open(source, formats=[_PIL_FORMAT[kind]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(_bomb_reason(kind, head, e, max_pixels)) from e
    try:
        _check_size(im.width, im.height, max_pixels)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # a photographed film may carry a rotation tag
        if im.mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16S..., F: deeper than 8 bits
            pixels = _pixels(im)
            im.close()  # Pillow's copy goes before windowing
            return Image.fromarray(auto_window(pixels), "L")
        gray = _to_gray(im)
    except BaseException:
        im.close()
        raise
    if gray is not im:
        im.close()
    return gray


def _pixels(im: Image.Image) -> np.ndarray:
    """(rows, cols) numpy copy of a one-channel picture, made a block of rows at a time: np.asarray(im)
    goes through im.tobytes(), which holds the whole picture twice more while it joins its pieces."""
    step = max(1, (1 << 18) // im.width)  # rows of about 256K pixels
    blocks = (np.asarray(im.crop((0, top, im.width, min(top + step, im.height))))
              for top in range(0, im.height, step))
    first = next(blocks)
    out = np.empty((im.height, im.width), first.dtype)
    out[:step] = first
    for top, block in zip(range(step, im.height, step), blocks, strict=True):
        out[top : top + step] = block
    return out


def _to_gray(im: Image.Image) -> Image.Image:
    """An 'L' image from any 8-bit Pillow mode: colour to luma, alpha dropped (the colour channels
    are the stored picture; X-ray files with alpha are opaque in practice). An 'L' image is returned
    as it is: most X-rays are, and a copy of a 2048-px one costs milliseconds per image."""
    if im.mode == "L":
        return im
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV...
    return im.convert("L")


def _decode_dicom(source: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Decode the first frame of a DICOM file through pydicom, respecting its display conventions.
    Large elements are read lazily, so an oversized image is refused before its pixel data is read."""
    try:
        ds = pydicom.dcmread(_Unnamed(source), force=True, defer_size="64 KB")
    except Exception as e:
        raise ImageError(f"not a valid DICOM file ({_describe(e, label)})") from e
    if len(ds) == 0:  # pydicom gives up silently on an element cut short by the end of the file
        raise ImageError("truncated or corrupt DICOM (no data elements could be read)")
    if not any(k in ds for k in _PIXEL_DATA):
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
    for key in _PIXEL_DATA:  # the decoded pixels are all that is needed now: the encoded ones go
        if key in ds:
            del ds[key]
    return Image.fromarray(_dicom_to_8bit(_first_frame(arr, ds), ds), "L")


def _first_frame(arr: np.ndarray, ds: Any) -> np.ndarray:
    """(rows, cols) or (rows, cols, samples): drop a leading frame axis if the decoder kept one."""
    samples = int(ds.get("SamplesPerPixel") or 1)
    if arr.ndim == (3 if samples == 1 else 4):
        arr = arr[0]
    return arr


def _dicom_to_8bit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Grey levels 0..255 (bones bright) from a DICOM frame: colour to luma; modality LUT, then the
    file's VOI window if any, stretched min-max (else the percentile window); MONOCHROME1 inverted."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # pydicom already converted YBR to RGB
        grey = luma(arr)
        return grey if grey.dtype == np.uint8 else auto_window(grey)
    out = None
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        try:
            out = stretch(arr, lambda v: apply_voi_lut(apply_modality_lut(v, ds), ds))
        except Exception:  # an unusable window (a zero width, say): the percentile window instead
            out = None
    if out is None:
        out = arr if arr.dtype == np.uint8 else auto_window(arr, lambda v: apply_modality_lut(v, ds))
    if photometric == "MONOCHROME1":
        return np.subtract(255, out, out=out) if out is not arr else 255 - out  # in place when ours
    return out
