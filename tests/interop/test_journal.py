"""The inbox's journal (interop/journal.py): what was acknowledged is written into the inbox, after a
crash too; a torn record hides nothing after it; segments go once written; large instances bypass it."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from interop.inbox import Inbox
from interop.journal import encode, records

STUDY = "1.2.826.0.1.3680043.8.498.1"


def sop(i: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.2.{i}"


def blob(i: int, size: int = 1000) -> bytes:
    return bytes([i % 251]) * size


def record(study: str, sop_uid: str, data: bytes) -> bytes:
    return b"".join(encode(study, sop_uid, [data[:7], data[7:]]))


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.dcm")}


def test_acknowledged_instances_not_yet_written_are_written_at_the_next_start(tmp_path: Path) -> None:
    """A crash while the journal's thread has not written anything: the disk as it was then (a copy
    of the folder) holds every acknowledged instance, and opening it writes them into incoming/."""
    inbox = Inbox(tmp_path / "live")
    gate = threading.Event()
    write = inbox.write

    def stuck(*args: object, **kwargs: object) -> Path:
        gate.wait()
        return write(*args, **kwargs)  # type: ignore[arg-type]

    inbox.write = stuck  # type: ignore[method-assign]
    assert inbox.journal is not None
    inbox.journal.write = stuck
    inbox.open()
    for i in range(3):
        inbox.store(STUDY, sop(i), [b"head", blob(i)])  # acknowledged: each append was synced
    assert not (inbox.incoming / STUDY).exists()  # nothing written into incoming/ yet
    shutil.copytree(tmp_path / "live", tmp_path / "after-crash")
    crashed = {p.name for p in (tmp_path / "after-crash" / "journal").glob("*.wal")}
    gate.set()
    inbox.close()

    restarted = Inbox(tmp_path / "after-crash").open()
    try:
        assert names(restarted.incoming / STUDY) == {f"{sop(i)}.dcm" for i in range(3)}
        assert (restarted.incoming / STUDY / f"{sop(2)}.dcm").read_bytes() == b"head" + blob(2)
        left = {p.name for p in (tmp_path / "after-crash" / "journal").glob("*.wal")}
        assert crashed and not crashed & left  # the crashed run's segments are gone once written
    finally:
        restarted.close()


def test_a_torn_record_hides_nothing_after_it() -> None:
    first, second = record(STUDY, sop(1), blob(1)), record(STUDY, sop(2), blob(2))
    torn = record(STUDY, sop(9), blob(9))[:600]  # a write that stopped halfway
    segment = first + torn + bytes(8) + second + bytes(4096)
    assert [(r.sop_uid, r.data) for r in records(segment)] == [(sop(1), blob(1)), (sop(2), blob(2))]
    flipped = bytearray(first)
    flipped[100] ^= 0xFF  # a record whose bytes changed fails its checksum
    assert [r.sop_uid for r in records(bytes(flipped) + second)] == [sop(2)]


def test_a_handed_over_instance_is_not_written_again(tmp_path: Path) -> None:
    journal = tmp_path / "inbox" / "journal"
    journal.mkdir(parents=True)
    (journal / "000000000000.wal").write_bytes(record(STUDY, sop(1), blob(1)) + record(STUDY, sop(2), blob(2)))
    handed = tmp_path / "inbox" / "studies" / STUDY
    handed.mkdir(parents=True)
    (handed / f"{sop(1)}.dcm").write_bytes(blob(1))
    inbox = Inbox(tmp_path / "inbox").open()
    try:
        assert names(inbox.incoming / STUDY) == {f"{sop(2)}.dcm"}
    finally:
        inbox.close()


def test_segments_rotate_and_go_once_written(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, segment_bytes=16 * 1024).open()  # ~14 records a segment
    threads = [threading.Thread(target=lambda k=k: [inbox.store(STUDY, sop(k * 25 + i), [blob(i)])
                                                    for i in range(25)]) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    inbox.settle(STUDY)
    assert len(names(inbox.incoming / STUDY)) == 100
    inbox.close()
    assert not list((tmp_path / "journal").iterdir())


def test_an_instance_too_large_for_a_segment_is_written_directly(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, segment_bytes=16 * 1024).open()
    try:
        inbox.store(STUDY, sop(1), [blob(1, size=10_000)])
        assert (inbox.incoming / STUDY / f"{sop(1)}.dcm").read_bytes() == blob(1, size=10_000)  # at once
    finally:
        inbox.close()


def test_a_file_torn_in_incoming_is_written_again_from_its_record(tmp_path: Path) -> None:
    """incoming/ files are written without a sync each (their records hold them until a syncfs): after a
    crash one may be short, and the record wins."""
    journal = tmp_path / "inbox" / "journal"
    journal.mkdir(parents=True)
    (journal / "000000000007.wal").write_bytes(record(STUDY, sop(1), blob(1)))
    incoming = tmp_path / "inbox" / "incoming" / STUDY
    incoming.mkdir(parents=True)
    (incoming / f"{sop(1)}.dcm").write_bytes(blob(1)[:10])
    inbox = Inbox(tmp_path / "inbox").open()
    try:
        assert (incoming / f"{sop(1)}.dcm").read_bytes() == blob(1)
        assert not (journal / "000000000007.wal").exists() and (journal / "000000000008.wal").exists()
    finally:
        inbox.close()


def test_a_rotation_that_cannot_make_a_segment_refuses_and_leaves_the_journal_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk is full when a segment must be made: that instance is refused (OSError: 0xA700), the
    current segment stays open and in use, and every instance acknowledged before or after is written."""
    import interop.journal as journal_module

    inbox = Inbox(tmp_path, segment_bytes=16 * 1024).open()
    journal = inbox.journal
    assert journal is not None
    try:
        inbox.store(STUDY, sop(0), [blob(0)])
        with journal._lock:  # no spare ready: the rotation must make one
            if journal._spare is not None:
                journal._drop(journal._spare)
                journal._spare = None

        def disk_full(path: Path, size: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(journal_module, "make_segment", disk_full)
        refused = 0
        for i in range(1, 40):
            try:
                inbox.store(STUDY, sop(i), [blob(i)])
            except OSError:
                refused += 1
        assert refused > 0
        inbox.settle(STUDY)  # the thread has written all it could: a retired current segment would go now
        assert journal._current is not None and not journal._current.retired
        os.fstat(journal._current.fd)  # still open, still its own
        monkeypatch.undo()
        inbox.store(STUDY, sop(99), [blob(99)])
        inbox.settle(STUDY)
        written = names(inbox.incoming / STUDY)
        assert f"{sop(0)}.dcm" in written and f"{sop(99)}.dcm" in written and len(written) == 41 - refused
        for name in written:  # each holds its own bytes: nothing went into another file
            i = int(name.removesuffix(".dcm").rsplit(".", 1)[1])
            assert (inbox.incoming / STUDY / name).read_bytes() == blob(i)
    finally:
        inbox.close()


@pytest.mark.parametrize("in_studies", [b"", b"version-1"], ids=["torn", "an earlier version"])
def test_a_handed_over_file_that_differs_from_its_record_is_written_again(tmp_path: Path, in_studies: bytes) -> None:
    """Only a file in studies/ equal to the record counts as handed over: a torn one (a crash before
    its sync), or an earlier version of an instance sent again, gives the record back to incoming/."""
    journal = tmp_path / "inbox" / "journal"
    journal.mkdir(parents=True)
    (journal / "000000000000.wal").write_bytes(record(STUDY, sop(1), blob(1)))
    handed = tmp_path / "inbox" / "studies" / STUDY
    handed.mkdir(parents=True)
    (handed / f"{sop(1)}.dcm").write_bytes(in_studies)
    inbox = Inbox(tmp_path / "inbox").open()
    try:
        assert (inbox.incoming / STUDY / f"{sop(1)}.dcm").read_bytes() == blob(1)
    finally:
        inbox.close()


def test_the_journal_thread_outlives_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spare segment that cannot be made (disk full) and a write that raises something unexpected are
    logged; the thread goes on, and a study still settles."""
    import interop.journal as journal_module

    inbox = Inbox(tmp_path, segment_bytes=16 * 1024).open()
    journal = inbox.journal
    assert journal is not None
    try:
        real_make = journal_module.make_segment
        def disk_full(path: Path, size: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(journal_module, "make_segment", disk_full)
        with journal._lock:
            if journal._spare is not None:
                journal._drop(journal._spare)
                journal._spare = None
            journal._last_append = 0.0  # quiet: the thread tries to make a spare now
        calls: list[str] = []
        real_write = inbox.write

        def flaky(*args: object, **kwargs: object) -> Path:
            calls.append(str(args[1]))
            if len(calls) == 1:
                raise RuntimeError("something unexpected")
            return real_write(*args, **kwargs)  # type: ignore[arg-type]

        journal.write = flaky
        inbox.store(STUDY, sop(1), [blob(1)])
        inbox.settle(STUDY)  # returns: the failed record counts as handled (it stays in its segment)
        monkeypatch.setattr(journal_module, "make_segment", real_make)
        inbox.store(STUDY, sop(2), [blob(2)])
        inbox.settle(STUDY)
        assert journal._thread is not None and journal._thread.is_alive()
        assert names(inbox.incoming / STUDY) == {f"{sop(2)}.dcm"}
    finally:
        inbox.close()
    reopened = Inbox(tmp_path).open()  # the record that failed is still in the journal: written now
    try:
        assert names(reopened.incoming / STUDY) == {f"{sop(1)}.dcm", f"{sop(2)}.dcm"}
    finally:
        reopened.close()
