"""The inbox's journal (interop/journal.py): what was acknowledged is written into the inbox, after a
crash too; a torn record hides nothing after it; segments go once written; large instances bypass it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

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
