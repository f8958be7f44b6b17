"""The listener's inbox: every acknowledged instance is on disk, whole, before its acknowledgement.

Layout under the inbox folder:

    tmp/                       instances being written (a temporary name, then fsync, then rename)
    incoming/STUDY/SOP.dcm     received and acknowledged, not yet handed to the pipeline
    studies/STUDY/SOP.dcm      every instance of a study that was handed over (the job's files)
    studies/STUDY/.pending     present from the move until the submission is recorded

A study is handed over by moving its incoming files into studies/STUDY (renames on one file system)
and submitting that folder; `.pending` makes a crash between the two harmless: a restarted listener
submits it again (the same content is the same job). A study that gets another instance after it
was handed over is submitted again, whole: the new report covers every image. Names are the UIDs
(digits and dots, checked), never anything else a peer sent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PENDING = ".pending"


def valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Inbox:
    """The inbox folder. One lock orders the renames into incoming/ against a hand-over of the same
    folder (the writes themselves run in parallel, outside it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    def open(self) -> Inbox:
        """Make the folders (and clear half-written temporary files of an earlier run)."""
        for folder in (self.tmp, self.incoming, self.studies):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        return self

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def store(self, study_uid: str, sop_uid: str, chunks: Iterator[bytes] | list[bytes]) -> Path:
        """Write one instance durably: a temporary file, fsync, rename into incoming/STUDY, fsync the
        folder. Returns the final path; raises OSError (nothing half-written remains) on failure."""
        if not (valid_uid(study_uid) and valid_uid(sop_uid)):
            raise ValueError("a StudyInstanceUID or SOPInstanceUID that is not a UID")
        folder = self.incoming / study_uid
        fd, tmp = tempfile.mkstemp(prefix=f"{sop_uid}.", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            final = folder / f"{sop_uid}.dcm"
            with self._lock:
                new_folder = not folder.exists()
                folder.mkdir(exist_ok=True)
                if new_folder:
                    fsync_dir(self.incoming)
                os.replace(tmp, final)
            fsync_dir(folder)
            return final
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def waiting(self) -> dict[str, float]:
        """Studies with acknowledged instances not yet handed over -> their newest file's mtime."""
        found: dict[str, float] = {}
        for folder in self.incoming.iterdir():
            times = [p.stat().st_mtime for p in folder.glob("*.dcm")]
            if times:
                found[folder.name] = max(times)
        return found

    def pending(self) -> list[str]:
        """Studies moved to studies/ whose submission was not recorded (a crash in between)."""
        return sorted(p.parent.name for p in self.studies.glob(f"*/{PENDING}"))

    def hand_over(self, study_uid: str) -> Path:
        """Move a study's incoming instances into studies/STUDY (marked pending); the folder to submit."""
        src = self.incoming / study_uid
        dest = self.studies / study_uid
        dest.mkdir(exist_ok=True)
        (dest / PENDING).touch()
        fsync_dir(dest)
        with self._lock:
            for path in sorted(src.glob("*.dcm")):
                os.replace(path, dest / path.name)
            with contextlib.suppress(OSError):
                src.rmdir()
        fsync_dir(dest)
        fsync_dir(self.incoming)
        return dest

    def submitted(self, study_uid: str) -> None:
        """The study's submission is recorded: clear its pending mark."""
        (self.studies / study_uid / PENDING).unlink(missing_ok=True)


def age(mtime: float) -> float:
    return time.time() - mtime
