"""Whether a submitted file may be read, decided in one place: scanning, workers and `decode` all open
files through `open_checked`, so a fix to the rules reaches every path.

The rules: nothing outside the submitted folder is read (a symbolic link is resolved, and the resolved
file opened without following a link swapped in since); a FIFO, device or folder is never opened
(opening a FIFO would block forever); a file larger than `max_file_bytes` is refused before any byte is
read. Each refusal is an `ImageError` whose reason is stored with the failed image.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from typing import BinaryIO

from model.errors import ImageError

DEFAULT_MAX_FILE_BYTES: int = 512 * 1024 * 1024
"""Largest file read by default (512 MiB); the caller passes the XRQ_MAX_FILE_BYTES setting. A picture
within the default pixel limit (50 million) takes at most 8 bytes a pixel even stored uncompressed
(16-bit RGBA: 400 MB), so no file that limit accepts is refused, while a chest X-ray is 5 to 100 MB.
A worker holds a file's bytes while it decodes them: this bounds what a decode thread can be made to
hold."""

OUTSIDE_FOLDER = "symbolic link points outside the submitted folder"
NOT_REGULAR = "not a regular file"

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)  # a FIFO never hangs us
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextlib.contextmanager
def open_checked(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Iterator[tuple[BinaryIO, int]]:
    """The open file and its size, if it may be read.

    With `root`, the path must resolve to somewhere inside the (resolved) root. The file is checked
    with stat before it is opened (non-blocking) and with fstat after, in case a FIFO was swapped in.
    Raises ImageError: OUTSIDE_FOLDER, NOT_REGULAR, "file too large: ..." (nothing read), or "cannot
    read file: ..." (transient). Reading is the caller's; `read_error` gives the reason for its OSError.
    """
    target, flags = os.fspath(path), _OPEN_FLAGS
    if root is not None:
        target, real_root, flags = os.path.realpath(target), os.path.realpath(root), flags | _NOFOLLOW
        if os.path.commonpath([target, real_root]) != real_root:
            raise ImageError(OUTSIDE_FOLDER)
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise ImageError(NOT_REGULAR)
        fd = os.open(target, flags)
    except OSError as e:
        raise read_error(e) from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(NOT_REGULAR)
        if st.st_size > max_file_bytes:
            raise ImageError(file_too_large(f"{st.st_size:,}", max_file_bytes))
        yield f, st.st_size


def read_error(e: OSError) -> ImageError:
    """The reason for a file that could not be opened or read: transient, as trying later may work."""
    text = " ".join((e.strerror or str(e)).split())
    return ImageError(f"cannot read file: {text}", transient=True)


def file_too_large(size: str, max_file_bytes: int) -> str:
    """The reason for a file of `size` bytes (a number already formatted) above the limit."""
    return (
        f"file too large: {size} bytes, above the limit of {max_file_bytes:,} bytes "
        "(set XRQ_MAX_FILE_BYTES to raise it)"
    )


# ---- file names as text --------------------------------------------------------------------------------
# A POSIX file name is bytes; Python decodes the ones that are not UTF-8 with surrogate escapes
# ("\udcff"), which no database accepts. Such names are stored as text with backslash escapes: a byte
# that is not UTF-8 as \xNN, a backslash itself as \\ (so the escape is lossless), and read back with
# `text_to_name` when the file is opened. A name that is valid UTF-8 without a backslash is unchanged.

_ESCAPED = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F])")


def name_to_text(name: str) -> str:
    """A file name (or path) as storable text: undecodable bytes as \\xNN, backslashes doubled."""
    if "\\" not in name and not any("\udc80" <= ch <= "\udcff" for ch in name):
        return name
    return "".join("\\\\" if ch == "\\" else f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else ch
                   for ch in name)


def text_to_name(text: str) -> str:
    """The file name (or path) `name_to_text` stored; text without a backslash is the name itself."""
    if "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)
