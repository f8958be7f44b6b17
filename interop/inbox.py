"""The listener's inbox: every acknowledged instance is on disk, whole, before its acknowledgement.

Layout under the inbox folder:

    journal/NNN.wal            acknowledged instances, appended and synced (interop/journal.py)
    tmp/                       instances being written (a temporary name, then fsync, then rename)
    incoming/STUDY/SOP.dcm     received and acknowledged, not yet handed to the pipeline
    studies/STUDY/SOP.dcm      every instance of a study that was handed over (the job's files)
    studies/STUDY/.pending     present from the move until the submission is recorded

An instance is acknowledged once it is in the journal (one fdatasync); the journal's thread then
writes it into incoming/ (a temporary file, fsync, rename, folder fsync), and a restart writes there
whatever a crash left in the journal. An instance too large for a journal segment is written into
incoming/ directly before its acknowledgement.

A study is handed over (once the journal has written all of it) by moving its incoming files into
studies/STUDY (renames on one file system) and submitting that folder; `.pending` makes a crash
between the two harmless: a restarted listener submits it again (the same content is the same job).
A study that gets another instance after it was handed over is submitted again, whole: the new
report covers every image. Names are the UIDs (digits and dots, checked), never anything else a
peer sent.
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

from interop.disk import fsync_dir, sync_file_system
from interop.journal import SEGMENT_BYTES, Journal, Record

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
PENDING = ".pending"


def valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(_UID.match(uid))


class Inbox:
    """The inbox folder. One lock orders the renames into incoming/ against a hand-over of the same
    folder (the writes themselves run in parallel, outside it)."""

    def __init__(self, root: Path, *, journal: bool = True, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self.journal = Journal(self.root / "journal", self.write, self.sync, segment_bytes) if journal else None

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
        if self.journal is not None:
            self.journal.replay(self.handed_over)
            self.journal.start()
        return self

    def close(self) -> None:
        """Write what the journal holds into incoming/ (a stop; a crash leaves it to the next start)."""
        if self.journal is not None:
            self.journal.close()

    def settle(self, study_uid: str) -> None:
        """Wait until every acknowledged instance of a study is in incoming/ (or handed over)."""
        if self.journal is not None:
            self.journal.settle(study_uid)

    def handed_over(self, record: Record) -> bool:
        """Whether a journal record is in studies/ as it is (a file there is synced before it is moved;
        one that differs is another version of the instance, or torn: the record is written again)."""
        path = self.studies / record.study_uid / f"{record.sop_uid}.dcm"
        try:
            return path.stat().st_size == len(record.data) and path.read_bytes() == record.data
        except OSError:
            return False

    def sync(self) -> None:
        """Make every file written with `write(..., sync=False)` durable: one syncfs of the inbox's file
        system (one commit of its journal for any number of files), or sync() where there is none."""
        sync_file_system(self.root)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def store(self, study_uid: str, sop_uid: str, chunks: list[bytes | bytearray]) -> None:
        """Make one instance durable, in the journal or (too large for it) as its file in incoming/;
        raises OSError (nothing acknowledged remains half-written) on failure."""
        if not (valid_uid(study_uid) and valid_uid(sop_uid)):
            raise ValueError("a StudyInstanceUID or SOPInstanceUID that is not a UID")
        if self.journal is not None and self.journal.fits(sum(len(chunk) for chunk in chunks)):
            self.journal.append(study_uid, sop_uid, chunks)
        else:
            self.write(study_uid, sop_uid, chunks)

    def write(self, study_uid: str, sop_uid: str, chunks: Iterator[bytes] | list[bytes | bytearray],
              sync: bool = True) -> Path:
        """Write one instance into incoming/STUDY: a temporary file, fsync, rename, fsync the folder.
        Returns the final path; raises OSError (nothing half-written remains) on failure. `sync=False`
        leaves out the fsyncs (the journal's thread, which holds the instance durably until a `sync`)."""
        if not (valid_uid(study_uid) and valid_uid(sop_uid)):
            raise ValueError("a StudyInstanceUID or SOPInstanceUID that is not a UID")
        folder = self.incoming / study_uid
        fd, tmp = tempfile.mkstemp(prefix=f"{sop_uid}.", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            final = folder / f"{sop_uid}.dcm"
            with self._lock:
                new_folder = not folder.exists()
                folder.mkdir(exist_ok=True)
                if new_folder and sync:
                    fsync_dir(self.incoming)
                os.replace(tmp, final)
            if sync:
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
        """Move a study's incoming instances into studies/STUDY (marked pending); the folder to submit.
        The files are listed, then synced, then moved: one the journal writes meanwhile stays in
        incoming/ for the next hand-over (a late image)."""
        self.settle(study_uid)
        src = self.incoming / study_uid
        dest = self.studies / study_uid
        new = not dest.exists()
        dest.mkdir(exist_ok=True)
        (dest / PENDING).touch()
        fsync_dir(dest)
        if new:
            fsync_dir(self.studies)
        names = sorted(src.glob("*.dcm"))
        if self.journal is not None:
            self.sync()  # the journal's files are written without a sync each
        with self._lock:
            for path in names:
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
