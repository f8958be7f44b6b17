"""xrq's own DICOM acceptor (interop/ul.py) at the edges a PACS and a broken peer reach: data sets in
many PDUs, stored as sent; timeouts; a PDU larger than announced; the file meta held to pydicom's."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pynetdicom.dsutils import encode_file_meta

from interop.inbox import Inbox
from interop.scp import IMPLEMENTATION, ScpConfig, StorageSCP, file_head, parse_allow
from interop.ul import Requestor, Store
from tests.interop.peers import free_port, storescu, tool, wait_for
from tests.interop.studies import make_study


@pytest.fixture
def scp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StorageSCP]:
    timeouts = getattr(request, "param", {})
    config = ScpConfig(port=free_port(), allow=parse_allow(["MODALITY@127.0.0.1"]), min_free_bytes=0, **timeouts)
    server = StorageSCP(config, Inbox(tmp_path / "inbox").open(), on_stored=lambda study: None)
    server.start()
    yield server
    server.stop()
    server.inbox.close()


def data_set_bytes(path: Path) -> bytes:
    """A file's data set as encoded, after its File Meta Information."""
    raw = path.read_bytes()
    meta_length = struct.unpack_from("<I", raw, 128 + 4 + 8)[0]
    return raw[128 + 4 + 12 + meta_length:]


@pytest.mark.parametrize("aet,sop", [("BENCH", "1.2.3.45"), ("A", "1.2.3.4"),
                                     ("MODALITY_SIXTEEN", "1.2.840.113619.2.55.3.604688119.969.1268071029.320")])
def test_the_file_meta_is_pydicoms_byte_for_byte(aet: str, sop: str) -> None:
    request = Store(Requestor(aet, "127.0.0.1"), "1.2.840.10008.5.1.4.1.1.1", sop, "1.2.840.10008.1.2.4.50",
                    b"", 0)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = request.sop_class, sop
    meta.TransferSyntaxUID = request.transfer_syntax
    meta.ImplementationClassUID, meta.ImplementationVersionName = IMPLEMENTATION
    meta.SourceApplicationEntityTitle = aet
    assert file_head(request) == b"\0" * 128 + b"DICM" + encode_file_meta(meta)


def test_a_data_set_in_many_small_pdus_is_stored_as_sent(scp: StorageSCP, tmp_path: Path) -> None:
    study, files = make_study(tmp_path / "s", 1)
    tool("storescu")
    out = storescu(scp.port, files[0], extra=("--max-send-pdu", "4096"))  # ~30 P-DATA-TFs for one instance
    assert out.returncode == 0, out.stdout + out.stderr
    scp.inbox.settle(study)
    stored = scp.inbox.incoming / study / files[0].name
    assert data_set_bytes(stored) == data_set_bytes(files[0])  # no transcoding, nothing lost between PDUs
    ds = pydicom.dcmread(stored)
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY" and ds.pixel_array.shape == (1024, 1024)


@pytest.mark.parametrize("propose,syntax", [("-xi", "1.2.840.10008.1.2"), ("-xe", "1.2.840.10008.1.2.1"),
                                             ("-xd", "1.2.840.10008.1.2.1.99")])
def test_each_uncompressed_syntax_is_read_and_stored_as_sent(scp: StorageSCP, tmp_path: Path, propose: str,
                                                             syntax: str) -> None:
    """Implicit and explicit VR data sets are read where they lie; a deflated one is inflated to read."""
    study, files = make_study(tmp_path / "s", 1)
    ds = pydicom.dcmread(files[0])
    ds.decompress()  # JPEG baseline as written: storescu converts only between uncompressed syntaxes
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    out = storescu(scp.port, plain, propose=propose)
    assert out.returncode == 0 and scp.counters.stored == 1, out.stdout + out.stderr
    scp.inbox.settle(study)
    stored = pydicom.dcmread(scp.inbox.incoming / study / f"{ds.SOPInstanceUID}.dcm")  # decompress() gave a new one
    assert stored.file_meta.TransferSyntaxUID == syntax and stored.StudyInstanceUID == study


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("scp", [{"artim_timeout": 0.5}], indirect=True)
def test_a_connection_that_never_asks_is_aborted(scp: StorageSCP) -> None:
    with socket.create_connection(("127.0.0.1", scp.port), timeout=30) as sock:
        assert receive_all(sock) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"  # A-ABORT, then closed


@pytest.mark.parametrize("scp", [{"idle_timeout": 0.5}], indirect=True)
def test_a_silent_association_is_aborted(scp: StorageSCP) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="XRQ")
    assert assoc.is_established
    wait_for(lambda: assoc.is_aborted, timeout=30, what="the listener to abort a silent association")


def test_a_pdu_larger_than_announced_is_aborted(scp: StorageSCP) -> None:
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", "XRQ"
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    with socket.create_connection(("127.0.0.1", scp.port), timeout=30) as sock:
        sock.sendall(pdu.encode())
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        sock.sendall(struct.pack(">BxI", 4, 64 * 1024 * 1024))  # a 64 MiB P-DATA-TF, 4 MiB announced
        assert receive_all(sock).endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06")  # invalid parameter
    assert wait_for(lambda: scp.counters.stored == 0, timeout=5, what="nothing stored")


@pytest.mark.parametrize("scp", [{"max_associations": 1}], indirect=True)
def test_connections_that_never_associate_are_bounded(scp: StorageSCP) -> None:
    """Each connection holds a thread until its A-ASSOCIATE-RQ (or its ARTIM): past 2 x the associations
    + 16 (18 here), a new one is closed at once, unanswered."""
    socks = [socket.create_connection(("127.0.0.1", scp.port), timeout=10) for _ in range(18)]
    try:
        wait_for(lambda: scp._acceptor is not None and len(scp._acceptor._threads) == 18, timeout=10,
                 what="18 connections served")
        with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as extra:
            assert extra.recv(16) == b""  # closed by the listener, no PDU
    finally:
        for sock in socks:
            sock.close()


def associate(port: int) -> socket.socket:
    """A raw connection with an accepted association proposing Verification and CR storage (context
    ids 1 and 3, explicit VR little endian), for the tests that send what no real SCU would."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", "XRQ"
    contexts = [build_context(Verification, "1.2.840.10008.1.2.1"),
                build_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")]
    for i, context in enumerate(contexts):
        context.context_id = 2 * i + 1
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    primitive.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(pdu.encode())
    kind, length_ = struct.unpack(">BxI", sock.recv(6, socket.MSG_WAITALL))
    assert kind == 2, kind
    sock.recv(length_, socket.MSG_WAITALL)
    return sock


def pdata(context_id: int, header: int, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, context_id, header) + data
    return struct.pack(">BxI", 4, len(pdv)) + pdv


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag, len(value)) + value


def test_a_command_set_without_end_is_aborted(scp: StorageSCP) -> None:
    with associate(scp.port) as sock:
        for _ in range(20):  # 20 x 4 KiB command fragments, none the last: past the 64 KiB a command may take
            with contextlib.suppress(OSError):
                sock.sendall(pdata(1, 0x01, bytes(4096)))
        assert receive_all(sock).endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06")


def test_a_command_without_its_message_id_is_aborted_not_a_crash(scp: StorageSCP) -> None:
    with associate(scp.port) as sock:
        sock.sendall(pdata(1, 0x03, element(0x0100, struct.pack("<H", 0x0030)) + element(0x0800, b"\x01\x01")))
        assert receive_all(sock).endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06")


def test_a_c_store_without_a_data_set_cannot_be_understood(scp: StorageSCP) -> None:
    with associate(scp.port) as sock:
        command = (element(0x0002, b"1.2.840.10008.5.1.4.1.1.1\0") + element(0x0100, struct.pack("<H", 1))
                   + element(0x0110, struct.pack("<H", 7)) + element(0x0800, b"\x01\x01")
                   + element(0x1000, b"1.2.3.4\0"))
        sock.sendall(pdata(3, 0x03, command))
        answer = sock.recv(4096)
        assert answer[0] == 4 and struct.pack("<HHIH", 0, 0x0900, 2, 0xC000) in answer


@pytest.mark.parametrize("scp", [{"artim_timeout": 0.5}], indirect=True)
def test_a_request_trickled_a_byte_at_a_time_is_cut_at_its_deadline(scp: StorageSCP) -> None:
    """The ARTIM timer is a deadline for the whole A-ASSOCIATE-RQ, not a pause between bytes."""
    import time

    with socket.create_connection(("127.0.0.1", scp.port), timeout=30) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"\x01\x00\x00\x00\x01\x00" + bytes(250):
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - started > 5:
                    break
        assert receive_all(sock).endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")
        assert time.monotonic() - started < 3


def test_a_deflated_data_set_is_read_without_inflating_it_all() -> None:
    """Four kilobytes that inflate to 200 MB: the UIDs come from the first MiB, and nothing more is made."""
    import resource
    import zlib

    from interop.scp import identify

    def explicit(group: int, el: int, vr: bytes, value: bytes) -> bytes:
        if vr in (b"OB", b"UN"):
            return struct.pack("<HH", group, el) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        return struct.pack("<HH", group, el) + vr + struct.pack("<H", len(value)) + value

    data = (explicit(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.1\0")
            + explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0") + explicit(0x0020, 0x000D, b"UI", b"1.2.3.5\0"))
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = squeeze.compress(data + explicit(0x0029, 0x0010, b"UN", bytes(200_000_000))) + squeeze.flush()
    assert len(bomb) < 300_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert identify(bomb, "1.2.840.10008.1.2.1.99", "1.2.840.10008.5.1.4.1.1.1", "1.2.3.4") == ("1.2.3.5", True)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: far under the 200 MB
