"""Bad input a user's folder really contains, made on the fly. Each maps to a fragment of its reason."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG whose header claims width×height pixels; ~100 KB on disk, never allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def huge_png(path: Path, real_png: Path, size: int = 2 << 30) -> Path:
    """A valid PNG followed by zeros up to `size` bytes (2 GiB): a sparse file, so it takes no disk and
    no time to make, yet a reader that does not check the size first would read all of it."""
    path.write_bytes(real_png.read_bytes())
    os.truncate(path, size)
    return path


def make_bad_files(folder: Path, real_png: Path, outside: Path, *, huge: bool = False) -> dict[str, str]:
    """Write one of each kind of bad file into `folder/bad/`; return {relpath: expected reason fragment}.
    `huge` adds a 2 GiB (sparse) file, above the default XRQ_MAX_FILE_BYTES."""
    bad = folder / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    data = real_png.read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 2])
    (bad / "random.png").write_bytes(os.urandom(4096))
    (bad / "notes.png").write_text("Patient list, do not upload.\n" * 20)
    (bad / "bomb.png").write_bytes(png_bomb())
    outside.write_bytes(data)
    (bad / "escape.png").symlink_to(outside)
    (bad / "dangling.png").symlink_to(bad / "gone.png")
    expected = {
        "bad/empty.png": "empty",
        "bad/truncated.png": "truncated",
        "bad/random.png": "not",
        "bad/notes.png": "text",
        "bad/bomb.png": "too large",
        "bad/escape.png": "outside the submitted folder",
        "bad/dangling.png": "cannot read",
    }
    if huge:
        huge_png(bad / "huge.png", real_png)
        expected["bad/huge.png"] = "file too large"
    return expected
