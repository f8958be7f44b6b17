"""The inbox's write-ahead journal: one synced write, and the instance may be acknowledged.

Written as its own file (a temporary file, fsync, rename, fsync of the folder), an instance costs two
commits of the file system's journal before its acknowledgement, and on one association that was
the listener's bound. Here it costs one `fdatasync` of data alone: the instance is appended to a
segment file whose blocks were written (zeros) and synced when the segment was made, so the sync
writes the new bytes and no metadata (the size and the block map do not change). The success status
goes back then.

A background thread then writes the instances into incoming/STUDY/SOP.dcm, without a sync each:
once no instance has arrived for `QUIET` seconds (a burst is received first, its files written
after), or `BACKLOG` wait, or a study is to be handed over (`settle`). It then syncs the file system
once (syncfs) for the whole batch, and only then counts them written and deletes each segment whose
records all are. So a file in incoming/ may be torn by a crash, but its record is still in the
journal; only a handed-over study (studies/) is taken as written.

After a crash (kill -9, power): `replay` reads every segment left and writes, durably, each whole
record not handed over. A record is whole when its checksum holds; one being written when it
stopped was never acknowledged, and the scan goes on past it to the next record's mark, so a write
that failed halfway never hides the acknowledged records after it.

Record (8-byte aligned): MAGIC, payload length (u32), crc32 of the payload (u32); the payload: the
study and SOP instance UIDs' lengths (u8 each), the UIDs, the file's bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from interop.disk import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"XRQJ"
_HEADER = struct.Struct("<4sII")
_UIDS = struct.Struct("<BB")
SEGMENT_BYTES = 32 * 1024 * 1024  # ~250 radiographs of 127 kB; made (zeros, synced) one ahead of need
QUIET = 0.05  # seconds without an arrival before the thread writes what came (instances of a burst ~1 ms apart)
BACKLOG = 1024  # or this many waiting
_ZEROS = bytes(1024 * 1024)


@dataclass(frozen=True)
class Record:
    study_uid: str
    sop_uid: str
    data: bytes  # the whole file


def encode(study_uid: str, sop_uid: str, chunks: list[bytes | bytearray]) -> list[bytes | bytearray]:
    """A record as the buffers to write one after the other (no copy of the instance's bytes)."""
    study, sop = study_uid.encode("ascii"), sop_uid.encode("ascii")
    parts = [_UIDS.pack(len(study), len(sop)), study, sop, *chunks]
    crc, length = 0, 0
    for part in parts:
        crc, length = zlib.crc32(part, crc), length + len(part)
    return [_HEADER.pack(MAGIC, length, crc), *parts, bytes(-(_HEADER.size + length) % 8)]


def records(data: bytes) -> Iterator[Record]:
    """The whole records of a segment, in order; a torn or failed one is stepped over."""
    position = 0
    while (start := data.find(MAGIC, position)) >= 0:
        _, length, crc = _HEADER.unpack_from(data, start) if start + _HEADER.size <= len(data) else (0, -1, 0)
        end = start + _HEADER.size + length
        payload = data[start + _HEADER.size:end]
        if length < _UIDS.size or end > len(data) or zlib.crc32(payload) != crc:
            position = start + 1
            continue
        study_length, sop_length = _UIDS.unpack_from(payload)
        uids = payload[_UIDS.size:_UIDS.size + study_length + sop_length].decode("ascii")
        yield Record(uids[:study_length], uids[study_length:], payload[_UIDS.size + study_length + sop_length:])
        position = end


def _file_bytes(record: bytes) -> bytes:
    """The file in a record this process appended (its checksum was taken then; replay checks it)."""
    length = _HEADER.unpack_from(record)[1]
    study_length, sop_length = _UIDS.unpack_from(record, _HEADER.size)
    return record[_HEADER.size + _UIDS.size + study_length + sop_length:_HEADER.size + length]


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    pending: int = 0  # records appended and not yet written into the inbox
    retired: bool = False  # full: nothing more will be appended


def make_segment(path: Path, size: int) -> Segment:
    """A segment of `size` zero bytes, written and synced (and its name synced into the folder)."""
    tmp = path.with_suffix(".making")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, len(_ZEROS)):
            os.pwrite(fd, _ZEROS[:min(len(_ZEROS), size - offset)], offset)
        os.fsync(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return Segment(path, fd)


@dataclass(frozen=True)
class _Work:
    segment: Segment
    offset: int
    length: int
    study_uid: str
    sop_uid: str


class Journal:
    """Appends durably (`append`); writes what it holds into the inbox in the background with
    `write(study, sop, chunks, sync=False)` and makes a batch durable with `sync()`."""

    def __init__(self, folder: Path, write: Callable[..., object], sync: Callable[[], None],
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder, self.write, self.sync, self.segment_bytes = Path(folder), write, sync, segment_bytes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # an append, a batch written, a settle, a close
        self._waiting: Counter[str] = Counter()  # study uid -> records not yet written and synced
        self._settling: Counter[str] = Counter()  # studies someone waits on: their records are due now
        self._todo: list[_Work] = []
        self._appending = 0  # appends between their reservation and their sync
        self._closing = False
        self._last_append = 0.0
        self._current: Segment | None = None
        self._spare: Segment | None = None
        self._open: set[Segment] = set()  # every segment whose file descriptor is open
        self._offset = 0
        self._next = 0
        self._thread: threading.Thread | None = None

    def fits(self, nbytes: int) -> bool:
        """Whether an instance of `nbytes` goes through the journal (a large one is written directly)."""
        return nbytes + 1024 <= self.segment_bytes // 4

    def replay(self, handed_over: Callable[[Record], bool]) -> int:
        """Write, durably, every whole record of the segments left by an earlier run unless it was
        handed over as it is, then delete those segments. Returns how many were written. Segments are
        read in the order they were made, so the last version of an instance sent twice wins."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob("*.making"):
            leftover.unlink()
        written = 0
        segments = sorted(self.folder.glob("*.wal"))
        for path in segments:
            for record in records(path.read_bytes()):
                if not handed_over(record):
                    self.write(record.study_uid, record.sop_uid, [record.data], sync=True)
                    written += 1
            path.unlink()
        if segments:
            fsync_dir(self.folder)
            self._next = int(segments[-1].stem) + 1
        if written:
            log.info("wrote %d acknowledged instances from the journal into the inbox", written)
        return written

    def start(self) -> None:
        with self._lock:
            self._current = self._make()
        self._thread = threading.Thread(target=self._run, name="xrq-inbox-journal", daemon=True)
        self._thread.start()

    def append(self, study_uid: str, sop_uid: str, chunks: list[bytes | bytearray]) -> None:
        """Durable when this returns (raises OSError otherwise): one pwrite under the lock, then one
        fdatasync outside it (a sync covers every write before it, so concurrent appends share them)."""
        record = encode(study_uid, sop_uid, chunks)
        size = sum(len(part) for part in record)
        with self._lock:
            if self._current is None or self._closing:
                raise OSError("the journal is closed")
            if self._offset + size > self.segment_bytes:
                self._rotate()
            segment, offset = self._current, self._offset
            self._offset += size
            segment.pending += 1
            self._waiting[study_uid] += 1
            self._appending += 1
        try:
            if os.pwritev(segment.fd, record, offset) != size:
                raise OSError(f"a short write into {segment.path.name}")
            os.fdatasync(segment.fd)
        except OSError:
            with contextlib.suppress(OSError):  # refused, so never replayed: unmark it (best effort)
                os.pwrite(segment.fd, bytes(len(MAGIC)), offset)
            with self._lock:
                self._appending -= 1
                self._waiting[study_uid] -= 1
                self._release(segment)
                self._changed.notify_all()
            raise
        with self._lock:
            self._appending -= 1
            self._todo.append(_Work(segment, offset, size, study_uid, sop_uid))
            self._last_append = time.monotonic()
            if len(self._todo) >= BACKLOG or self._settling[study_uid] or self._closing:
                self._changed.notify_all()

    def settle(self, study_uid: str, timeout: float = 600) -> None:
        """Wait until every acknowledged instance of a study is written into the inbox and synced."""
        with self._changed:
            self._settling[study_uid] += 1
            self._changed.notify_all()
            try:
                self._changed.wait_for(lambda: self._waiting[study_uid] <= 0 or not self._running(), timeout)
            finally:
                self._settling[study_uid] -= 1
                if self._settling[study_uid] <= 0:
                    del self._settling[study_uid]
                if self._waiting[study_uid] <= 0:
                    self._waiting.pop(study_uid, None)

    def close(self) -> None:
        """Write what is left into the inbox (appends still in flight first) and delete the segments."""
        if self._thread is None:
            return
        with self._lock:
            self._closing = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._appending == 0, timeout=60)
        self._thread.join()
        with self._lock:
            self._thread = None
            self._current = self._spare = None
            for segment in list(self._open):  # one with records not written stays, for the next start
                self._drop(segment, delete=segment.pending == 0)
            self._changed.notify_all()

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _next_path(self) -> Path:  # under the lock
        path = self.folder / f"{self._next:012d}.wal"
        self._next += 1
        return path

    def _make(self) -> Segment:  # under the lock
        segment = make_segment(self._next_path(), self.segment_bytes)
        self._open.add(segment)
        return segment

    def _rotate(self) -> None:  # under the lock
        assert self._current is not None
        new = self._spare or self._make()  # first: if this fails, the current segment stays as it was
        old, self._current, self._spare, self._offset = self._current, new, None, 0
        old.retired = True
        self._release(old, written=0)

    def _release(self, segment: Segment, written: int = 1) -> None:  # under the lock
        """`written` of a segment's records are no longer pending; a full one with none pending goes."""
        segment.pending -= written
        if segment.retired and segment.pending == 0:
            self._drop(segment)

    def _drop(self, segment: Segment, delete: bool = True) -> None:  # under the lock
        if segment.fd < 0 or (not self._closing and segment in (self._current, self._spare)):
            return
        self._open.discard(segment)
        os.close(segment.fd)
        segment.fd = -1
        if delete:
            segment.path.unlink(missing_ok=True)

    def _due(self) -> bool:  # under the lock
        if not self._todo:
            return self._closing and self._appending == 0
        return (self._closing or bool(self._settling) or len(self._todo) >= BACKLOG
                or time.monotonic() - self._last_append >= QUIET)

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception:  # never die silently: hand-overs wait on this thread
                log.exception("the inbox's journal thread failed; trying again in a second")
                time.sleep(1)

    def _step(self) -> bool:
        """One turn: write what is due, or make a spare segment. False once closed and empty."""
        with self._changed:
            self._changed.wait_for(self._due, timeout=QUIET)
            batch, self._todo = (self._todo, []) if self._due() else ([], self._todo)
            finished = self._closing and not batch and not self._todo and self._appending == 0
        if batch:
            self._write(batch)
        elif finished:
            return False
        else:
            self._prepare_spare()
        return True

    def _write(self, batch: list[_Work]) -> None:
        """Write a batch into the inbox, sync once, then count it written."""
        written: list[_Work] = []
        for work in batch:
            try:
                data = _file_bytes(os.pread(work.segment.fd, work.length, work.offset))
                self.write(work.study_uid, work.sop_uid, [data], sync=False)
                written.append(work)
            except Exception as exc:  # its segment stays: the record is written at the next start
                log.error("instance %s stays in the journal until the next start, not written into the inbox: %r",
                          work.sop_uid, exc)
        try:
            self.sync()
        except Exception as exc:
            log.error("the inbox could not be synced; %d instances stay in the journal until the next start: %s",
                      len(written), exc)
            written = []
        with self._lock:
            for work in batch:  # a hand-over of the study need not wait for it either way
                self._waiting[work.study_uid] -= 1
            for work in written:
                self._release(work.segment)
            self._changed.notify_all()

    def _prepare_spare(self) -> None:
        """Make the next segment while nothing arrives, or once the current one is half full (else a
        rotation makes it, holding appends meanwhile)."""
        with self._lock:
            if self._spare is not None or self._current is None or self._closing:
                return
            if time.monotonic() - self._last_append < QUIET and self._offset < self.segment_bytes // 2:
                return
            path = self._next_path()
        spare = make_segment(path, self.segment_bytes)  # outside the lock: appends go on meanwhile
        with self._lock:
            self._open.add(spare)
            # kept only if it comes after the current one: replay's order is the order of acknowledgement
            if self._spare is None and self._current is not None and spare.path.name > self._current.path.name:
                self._spare = spare
            else:
                self._drop(spare)
