"""Making what was written durable: a folder's entries (fsync of the folder), a whole file system
(syncfs). Shared by the inbox and its journal."""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path


def sync_file_system(path: Path) -> None:
    """syncfs(2) on the file system holding `path` (Linux); os.sync() elsewhere."""
    syncfs = getattr(_libc(), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    finally:
        os.close(fd)


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
