"""Walk a submitted folder, hash every file, and group the images into studies (exams).

Scanning decides what a job contains and never decodes a picture: a file that is not an image is still
listed and fails later, at decode time, with its reason. What scanning can already tell (a symlink
leading out of the folder, a FIFO, an unreadable, empty or too large file) is recorded as the image's
`error`, so the user learns it when submitting.

Security: files are opened through `model.imaging.files.open_checked`, the check workers use too. Nothing
outside the submitted folder is read: a symlink whose target resolves outside it is listed with an
error and never opened; symlinked folders are not followed; a FIFO or device is never opened.

A file larger than `max_file_bytes` is listed with its reason and not hashed: a worker would refuse it
anyway, and hashing gigabytes would only slow the submission down (the hash streams, so memory was
never the concern). Its study's fingerprint is then its relpath and reason, like any unreadable file's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from model.errors import ImageError, ScanError
from model.imaging.files import DEFAULT_MAX_FILE_BYTES, file_too_large, open_checked, read_error
from model.imaging.images import dicom_study_uid, sniff_bytes

GROUP_BY: tuple[str, ...] = ("auto", "image", "folder", "pattern")
"""Ways to group images into studies; see `scan_folder`."""

_CHUNK = 1 << 20
_IU_NAME = re.compile(r"^(?:CXR)?(\d+)_IM-")


@dataclass(frozen=True)
class ScannedImage:
    """One file found under the submitted folder."""

    path: Path  # absolute path of the file as found under root (symlinks not resolved)
    relpath: str  # POSIX path relative to root
    sha256: str | None  # hex digest of the content; None when the file could not be read
    size_bytes: int | None
    error: str | None  # why the file is unusable, known at scan time


@dataclass(frozen=True)
class ScannedStudy:
    """The images of one study, with the key that groups them."""

    uid: str  # IU uid ("1000"), DICOM StudyInstanceUID, folder relpath, or file relpath
    grouping: str  # "iu" | "dicom" | "folder" | "image" | "pattern"
    images: tuple[ScannedImage, ...]  # sorted by relpath

    @property
    def fingerprint(self) -> str:
        """sha256 hex over the grouping, the uid and the images' content hashes (relpath and error for
        files that could not be read). Identical content gives an identical fingerprint on any machine,
        in any folder: it is what "already reported" is decided on."""
        parts = [img.sha256 if img.sha256 is not None else [img.relpath, img.error] for img in self.images]
        blob = json.dumps(["xrq-study-v1", self.grouping, self.uid, parts], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def error(self) -> str | None:
        """The "relpath: reason" of the first image with a scan-time error, else None."""
        for img in self.images:
            if img.error is not None:
                return f"{img.relpath}: {img.error}"
        return None


IMAGE_SUFFIXES = frozenset({
    "png", "jpg", "jpeg", "jpe", "jfif", "dcm", "dicom", "dic", "ima", "tif", "tiff", "bmp", "webp", "gif",
    "j2k", "jp2", "jpx", "jpf", "pgm", "ppm", "pnm"})
"""Names that say "a picture": such a file is always a study (it fails, with its reason, if it is not one)."""


def is_ignored(relpath: str, head: bytes) -> bool:
    """A file that is plainly not a picture: a name ending in another suffix (notes.txt, report.pdf,
    Thumbs.db) and content that is no picture xrq knows. It is counted as ignored, not failed. A file
    with no suffix (DICOM files often have none) is never ignored: it fails with its reason instead."""
    name = relpath.rpartition("/")[2]
    suffix = name.rpartition(".")[2].lower() if "." in name.strip(".") else ""
    return bool(suffix) and suffix not in IMAGE_SUFFIXES and sniff_bytes(head) is None


def scan_folder(
    root: str | os.PathLike[str], *, group_by: str = "auto", pattern: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, progress: Callable[[int], None] | None = None,
    ignored: Callable[[str], None] | None = None,
) -> list[ScannedStudy]:
    """Every file under `root` (recursively, hidden names skipped), hashed and grouped into studies,
    sorted by (grouping, uid). `progress(1)` is called after each file (hashing thousands takes a while).

    group_by:
      auto     DICOM files by StudyInstanceUID; IU names `{uid}_IM-…` and `CXR{uid}_IM-…` by uid;
               anything else is a study of one image.
      image    every file is its own study.
      folder   one subfolder per study (uid = the folder's relpath); files directly in root stand alone.
      pattern  `pattern` is a regex searched in each relpath; its group `study` (else group 1) is the
               uid; files that do not match stand alone.
    Files that failed at scan time (unreadable, outside the folder, empty, larger than max_file_bytes)
    are always studies of one. Files that are plainly not pictures (`is_ignored`: notes.txt) are left
    out, each told to `ignored(relpath)`. Raises ScanError for a root that is not a folder, an unknown group_by,
    or a bad pattern.
    """
    regex = _check_arguments(group_by, pattern)
    top = Path(os.path.abspath(root))
    if not top.is_dir():
        raise ScanError(f"not a folder: {os.fspath(root)} (submit the folder that holds the images)")
    real_top = os.path.realpath(top)
    groups: dict[tuple[str, str], list[ScannedImage]] = {}
    for image, head in _walk(top, real_top, max_file_bytes):
        if is_ignored(image.relpath, head):
            if ignored is not None:
                ignored(image.relpath)
            continue
        key = _study_key(image, head, group_by, regex)
        groups.setdefault(key, []).append(image)
        if progress is not None:
            progress(1)
    studies = [
        ScannedStudy(uid=uid, grouping=grouping, images=tuple(sorted(imgs, key=lambda i: i.relpath)))
        for (grouping, uid), imgs in groups.items()
    ]
    return sorted(studies, key=lambda s: (s.grouping, s.uid))


def _check_arguments(group_by: str, pattern: str | None) -> re.Pattern[str] | None:
    """Validate group_by and pattern; the compiled pattern when grouping by pattern."""
    if group_by not in GROUP_BY:
        raise ScanError(f"unknown grouping {group_by!r}: use one of {', '.join(GROUP_BY)}")
    if group_by != "pattern":
        if pattern is not None:
            raise ScanError("a --pattern is only used with --group-by pattern")
        return None
    if not pattern:
        raise ScanError("--group-by pattern needs a --pattern, e.g. '^(?P<study>[^/]+)/'")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ScanError(f"bad --pattern {pattern!r}: {e}") from e
    if "study" not in regex.groupindex and regex.groups == 0:
        raise ScanError(f"bad --pattern {pattern!r}: it needs a group, (?P<study>...) or (...), for the id")
    return regex


def _walk(top: Path, real_top: str, max_file_bytes: int) -> Iterator[tuple[ScannedImage, bytes]]:
    """Each non-hidden file under `top` with the first bytes of its content, depth first in name order.

    Iterative, with a stack of folders still being listed: a tree of any depth (1,100 nested folders,
    a symlink farm flattened by a copy) cannot exhaust Python's recursion limit.
    """
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = []
    listed = _list(top, "")
    if isinstance(listed, ScannedImage):
        yield listed, b""
        return
    stack.append(("", listed))
    while stack:
        rel, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        relpath = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_symlink():
            if _is_dir(entry.path):
                continue  # symlinked folders are not followed
        elif entry.is_dir(follow_symlinks=False):
            inner = _list(top, relpath)
            if isinstance(inner, ScannedImage):
                yield inner, b""
            else:
                stack.append((relpath, inner))
            continue
        yield _hash_file(top, real_top, relpath, max_file_bytes)


def _list(top: Path, rel: str) -> Iterator[os.DirEntry[str]] | ScannedImage:
    """The entries of top/rel in name order, or a failed entry saying why the folder cannot be read."""
    try:
        with os.scandir(top / rel if rel else top) as it:
            return iter(sorted(it, key=lambda e: e.name))
    except OSError as e:
        return _failed(top, rel or ".", f"cannot read folder: {' '.join(str(e.strerror or e).split())}")


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _failed(top: Path, relpath: str, error: str) -> ScannedImage:
    return ScannedImage(path=top / relpath, relpath=relpath, sha256=None, size_bytes=None, error=error)


def _hash_file(top: Path, real_top: str, relpath: str, max_file_bytes: int) -> tuple[ScannedImage, bytes]:
    """Read a file once, in chunks, if `open_checked` allows: its sha256, size and first bytes. Never
    reads past max_file_bytes, even from a file that grows while it is read."""
    try:
        with open_checked(top / relpath, root=real_top, max_file_bytes=max_file_bytes) as (f, _):
            digest, size, head = hashlib.sha256(), 0, b""
            try:
                while chunk := f.read(_CHUNK):
                    head = head or chunk[:8192]
                    digest.update(chunk)
                    size += len(chunk)
                    if size > max_file_bytes:
                        raise ImageError(file_too_large(f"more than {max_file_bytes:,}", max_file_bytes))
            except OSError as e:
                raise read_error(e) from e
    except ImageError as e:
        return _failed(top, relpath, e.reason), b""
    error = "empty file (0 bytes)" if size == 0 else None
    return ScannedImage(top / relpath, relpath, digest.hexdigest(), size, error), head


def _study_key(
    image: ScannedImage, head: bytes, group_by: str, regex: re.Pattern[str] | None
) -> tuple[str, str]:
    """(grouping, uid) of the study an image belongs to."""
    alone = ("image", image.relpath)
    if image.error is not None or group_by == "image":
        return alone
    if group_by == "folder":
        parent = image.relpath.rpartition("/")[0]
        return ("folder", parent) if parent else alone
    if group_by == "pattern" and regex is not None:
        found = regex.search(image.relpath)
        uid = found and (found.group("study") if "study" in regex.groupindex else found.group(1))
        return ("pattern", uid) if uid else alone
    if sniff_bytes(head) == "dicom":
        uid = dicom_study_uid(image.path)
        if uid:
            return ("dicom", uid)
    named = _IU_NAME.match(image.relpath.rpartition("/")[2])
    return ("iu", named.group(1)) if named else alone
