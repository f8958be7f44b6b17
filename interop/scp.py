"""The Storage SCP behind `xrq listen`: C-ECHO, and C-STORE of the images xrq reports.

- Association: only the peers of the allow list (AET@HOST, or AET from any host) are accepted; any
  other is rejected with "calling AE title not recognised" and logged. `allow_any` opens it.
- Presentation: every storage SOP class is accepted at association (so that a PACS sending a whole
  study can go on), in the transfer syntaxes this host can decode; a class xrq does not report (a CT,
  an SR, a PDF) is then refused per instance with status 0x0122 (SOP class not supported), logged,
  and the association goes on.
- Durability: an instance is acknowledged (0x0000) only once it is in the inbox (fsync + rename). One
  too large for `max_instance_bytes`, or arriving when the disk has less than `min_free_bytes` free,
  or that cannot be written, gets 0xA700 (out of resources) and leaves no file.
Logs name peers, SOP classes and UIDs, never patient data.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from interop.data import IMAGE_SOP_CLASSES
from interop.errors import ListenerError
from interop.inbox import Inbox, valid_uid
from interop.uids import derived_uid
from interop.ul import Acceptor, Limits, Requestor, Store
from interop.wire import even

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported
DOES_NOT_MATCH = 0xA900  # Error: data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000
MAX_PDU = 4 * 1024 * 1024  # what we receive: a 127 kB radiograph comes in one P-DATA instead of eight
_STUDY_INSTANCE_UID = 0x0020000D
_INFLATED_HEAD = 1 << 20
# Implementation Class UID and Version Name (A-ASSOCIATE-AC, File Meta Information): xrq's own UL
IMPLEMENTATION = (derived_uid("implementation", "xrq"), "XRQ_1")

_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
_IMPLICIT, _DEFLATED = _UNCOMPRESSED[0], _UNCOMPRESSED[2]
_COMPRESSED = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
               "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
               "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5")


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes xrq can decode here: uncompressed always, each compressed one whose pydicom
    decoder has its plugin installed (JPEG lossless needs pylibjpeg-libjpeg, for instance)."""
    from pydicom.pixels import get_decoder

    found = list(_UNCOMPRESSED)
    for uid in _COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                found.append(uid)
        except NotImplementedError:
            continue
    return found


@dataclass(frozen=True)
class Peer:
    aet: str
    host: str | None  # None: any host

    def admits(self, aet: str, host: str) -> bool:
        return aet == self.aet and (self.host is None or self.host == host)

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}" if self.host else self.aet


def parse_allow(values: list[str] | tuple[str, ...]) -> tuple[Peer, ...]:
    """`AET@HOST` or `AET` entries (several per value, space or comma separated) as peers."""
    peers = []
    for value in values:
        for entry in value.replace(",", " ").split():
            aet, _, host = entry.partition("@")
            if not aet or len(aet) > 16 or "\\" in aet:
                raise ListenerError(f"{entry!r} is not a peer: give AET@HOST (an AE title of 1 to 16 characters)")
            peers.append(Peer(aet, host or None))
    return tuple(peers)


@dataclass(frozen=True)
class ScpConfig:
    aet: str = "XRQ"
    bind: str = "127.0.0.1"
    port: int = 11112
    allow: tuple[Peer, ...] = ()
    allow_any: bool = False
    max_associations: int = 10
    max_instance_bytes: int = 512 * 1024 * 1024
    min_free_bytes: int = 1_000_000_000
    artim_timeout: float = 30.0  # seconds a connection has to send its A-ASSOCIATE-RQ
    idle_timeout: float = 60.0  # seconds of silence inside an association before it is aborted


@dataclass
class Counters:
    stored: int = 0
    refused: int = 0
    rejected_associations: int = 0


class StorageSCP:
    """A running Storage SCP; `on_stored(study_uid)` hears each acknowledged instance. The network is
    interop/ul.py's acceptor (a blocking thread per association); this class is the policy: who may
    associate, which instances are stored, and what status each gets."""

    def __init__(self, config: ScpConfig, inbox: Inbox, on_stored: Callable[[str], None]) -> None:
        if not config.allow and not config.allow_any:
            raise ListenerError("no peer may send: give the PACS or modality that sends with --allow AET@HOST "
                                "(or open the listener to anyone with --allow-any)")
        self.config, self.inbox, self.on_stored = config, inbox, on_stored
        self.counters = Counters()
        self._lock = threading.Lock()
        self._acceptor: Acceptor | None = None

    @property
    def port(self) -> int:
        return self._acceptor.port if self._acceptor is not None else self.config.port

    def start(self) -> None:
        from pynetdicom import AllStoragePresentationContexts
        from pynetdicom.presentation import build_context
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        config = self.config
        syntaxes = decodable_transfer_syntaxes()
        contexts = [build_context(str(cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts]
        contexts.append(build_context(Verification))
        limits = Limits(max_pdu=MAX_PDU, max_associations=config.max_associations,
                        max_data_set_bytes=config.max_instance_bytes, artim=config.artim_timeout,
                        idle=config.idle_timeout)
        if config.allow_any:
            log.warning("the listener accepts associations from any AE title and host (--allow-any)")
        acceptor = Acceptor(config.aet, (config.bind, config.port), contexts, self, limits, IMPLEMENTATION)
        try:
            acceptor.start()
        except OSError as exc:
            raise ListenerError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}") from exc
        self._acceptor = acceptor
        log.info("listening as %s on %s:%d", config.aet, config.bind, self.port)

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None

    def admit(self, peer: Requestor) -> bool:
        if self.config.allow_any or any(allowed.admits(peer.aet, peer.host) for allowed in self.config.allow):
            return True
        with self._lock:
            self.counters.rejected_associations += 1
        log.warning("rejected an association from %s: not in the allow list", peer)
        return False

    def _refuse(self, status: int, why: str, request: Store, *args: object) -> int:
        with self._lock:
            self.counters.refused += 1
        log.warning("refused an instance from %s (status 0x%04X): " + why, request.peer, status, *args)
        return status

    def store(self, request: Store) -> int:
        """The status of one C-STORE: success only once the instance is in the inbox, whole and synced."""
        sop_class, sop_uid = request.sop_class, request.sop_instance
        if sop_class not in IMAGE_SOP_CLASSES:
            return self._refuse(NOT_SUPPORTED, "SOP class %s is not an image xrq reports", request, sop_class)
        if request.data_set is None or request.size > self.config.max_instance_bytes:
            return self._refuse(OUT_OF_RESOURCES, "%d bytes, more than the %d allowed", request, request.size,
                                self.config.max_instance_bytes)
        if self.inbox.free_bytes() - request.size < self.config.min_free_bytes:
            return self._refuse(OUT_OF_RESOURCES, "less than %d bytes free for the inbox", request,
                                self.config.min_free_bytes)
        if not valid_uid(sop_uid):
            return self._refuse(DOES_NOT_MATCH, "instance %r: not a UID", request, sop_uid[:80])
        try:
            study_uid, same = identify(request.data_set, request.transfer_syntax, sop_class, sop_uid)
        except Exception:  # a data set pydicom cannot read
            return self._refuse(CANNOT_UNDERSTAND, "instance %s cannot be read", request, sop_uid)
        if not same or not valid_uid(study_uid):
            return self._refuse(DOES_NOT_MATCH, "instance %s: its UIDs do not match the request", request, sop_uid)
        try:
            self.inbox.store(study_uid, sop_uid, [file_head(request), request.data_set])
        except OSError as exc:
            return self._refuse(OUT_OF_RESOURCES, "instance %s could not be written: %s", request, sop_uid,
                                exc.strerror or exc)
        with self._lock:
            self.counters.stored += 1
        self.on_stored(study_uid)
        return SUCCESS


def file_head(request: Store) -> bytes:
    """The preamble, prefix and File Meta Information (PS3.10 7.1, explicit VR little endian) that make
    the received data set a DICOM file, stored as received: no transcoding. Written here rather than
    with pydicom's FileMetaDataset, which took 0.8 ms an instance, more than the rest of reception;
    a test holds it byte for byte to pydicom's encoding."""
    elements = b"".join((
        _short(0x0001, b"OB", b"\0\1"),
        _short(0x0002, b"UI", even(request.sop_class, b"\0")),
        _short(0x0003, b"UI", even(request.sop_instance, b"\0")),
        _short(0x0010, b"UI", even(request.transfer_syntax, b"\0")),
        _short(0x0012, b"UI", even(IMPLEMENTATION[0], b"\0")),
        _short(0x0013, b"SH", even(IMPLEMENTATION[1], b" ")),
        _short(0x0016, b"AE", even(request.peer.aet, b" ")),
    ))
    return b"".join((b"\0" * 128, b"DICM", _short(0x0000, b"UL", struct.pack("<I", len(elements))), elements))


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-0002 element: OB takes a 4-byte length after two reserved bytes, the others 2 bytes."""
    if vr == b"OB":
        return struct.pack("<HH", 2, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


def identify(data_set: bytes | bytearray, transfer_syntax: str, sop_class: str, sop_uid: str) -> tuple[str, bool]:
    """(StudyInstanceUID, whether the data set's SOP Class and Instance UIDs are the request's). Reads
    the elements up to the StudyInstanceUID only (the SOP UIDs come before it, in group 0008), where
    they lie (0.1 ms); a deflated data set is inflated only as far as its first MiB, so that a few
    kilobytes that inflate to gigabytes cost no more than that."""
    from io import BytesIO

    from pydicom.filereader import read_dataset

    def stop(tag: int, vr: str | None, length: int) -> bool:
        return tag > _STUDY_INSTANCE_UID

    if transfer_syntax == _DEFLATED:
        data_set = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data_set, _INFLATED_HEAD)
    ds = read_dataset(BytesIO(data_set), transfer_syntax == _IMPLICIT, True, stop_when=stop)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID) == sop_uid and str(ds.SOPClassUID) == sop_class
