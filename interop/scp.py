"""The Storage SCP behind `xrq listen` (pynetdicom): C-ECHO, and C-STORE of the images xrq reports.

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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from interop.data import IMAGE_SOP_CLASSES
from interop.errors import ListenerError
from interop.inbox import Inbox, valid_uid

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_SUPPORTED = 0x0122  # Refused: SOP Class not supported
DOES_NOT_MATCH = 0xA900  # Error: data set does not match SOP class
CANNOT_UNDERSTAND = 0xC000
MAX_PDU = 4 * 1024 * 1024  # what we receive: a 127 kB radiograph comes in one P-DATA instead of eight

_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
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


@dataclass
class Counters:
    stored: int = 0
    refused: int = 0
    rejected_associations: int = 0


class StorageSCP:
    """A running Storage SCP; `on_stored(study_uid)` hears each acknowledged instance."""

    def __init__(self, config: ScpConfig, inbox: Inbox, on_stored: Callable[[str], None]) -> None:
        if not config.allow and not config.allow_any:
            raise ListenerError("no peer may send: give the PACS or modality that sends with --allow AET@HOST "
                                "(or open the listener to anyone with --allow-any)")
        self.config, self.inbox, self.on_stored = config, inbox, on_stored
        self.counters = Counters()
        self._lock = threading.Lock()
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        config = self.config
        ae = AE(ae_title=config.aet)
        ae.maximum_associations = config.max_associations
        ae.maximum_pdu_size = MAX_PDU  # fewer, larger PDUs: pynetdicom's reactor handles each in a loop turn
        syntaxes = decodable_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), syntaxes)
        ae.add_supported_context(Verification)
        if config.allow_any:
            log.warning("the listener accepts associations from any AE title and host (--allow-any)")
        handlers: list[Any] = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, self._on_echo)]
        try:
            self._server = ae.start_server((config.bind, config.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ListenerError(f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}") from exc
        log.info("listening as %s on %s:%d", config.aet, config.bind, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_requested(self, event: Any) -> None:
        if self.config.allow_any:
            return
        aet = str(event.assoc.requestor.primitive.calling_ae_title).strip()
        host = str(event.assoc.requestor.address)
        if any(peer.admits(aet, host) for peer in self.config.allow):
            return
        with self._lock:
            self.counters.rejected_associations += 1
        log.warning("rejected an association from %s@%s: not in the allow list", aet, host)
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE not recognised
        event.assoc.kill()  # as pynetdicom's own rejections do: the DUL sends the A-ASSOCIATE-RJ, then stops

    def _on_echo(self, event: Any) -> int:
        return SUCCESS

    def _refuse(self, status: int, why: str, event: Any, *args: object) -> int:
        with self._lock:
            self.counters.refused += 1
        peer = f"{str(event.assoc.requestor.ae_title).strip()}@{event.assoc.requestor.address}"
        log.warning("refused an instance from %s (status 0x%04X): " + why, peer, status, *args)
        return status

    def _on_store(self, event: Any) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_uid = str(request.AffectedSOPInstanceUID)
        if sop_class not in IMAGE_SOP_CLASSES:
            return self._refuse(NOT_SUPPORTED, "SOP class %s is not an image xrq reports", event, sop_class)
        size = request.DataSet.getbuffer().nbytes
        if size > self.config.max_instance_bytes:
            return self._refuse(OUT_OF_RESOURCES, "%d bytes, more than the %d allowed", event, size,
                                self.config.max_instance_bytes)
        if self.inbox.free_bytes() - size < self.config.min_free_bytes:
            return self._refuse(OUT_OF_RESOURCES, "less than %d bytes free for the inbox", event,
                                self.config.min_free_bytes)
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            same = str(ds.SOPInstanceUID) == sop_uid and str(ds.SOPClassUID) == sop_class
        except Exception:  # a data set pydicom cannot read
            return self._refuse(CANNOT_UNDERSTAND, "instance %s cannot be read", event, sop_uid)
        if not same or not valid_uid(study_uid) or not valid_uid(sop_uid):
            return self._refuse(DOES_NOT_MATCH, "instance %s: its UIDs do not match the request", event, sop_uid)
        try:
            self.inbox.store(study_uid, sop_uid, [event.encoded_dataset(include_meta=True)])
        except OSError as exc:
            return self._refuse(OUT_OF_RESOURCES, "instance %s could not be written: %s", event, sop_uid,
                                exc.strerror or exc)
        with self._lock:
            self.counters.stored += 1
        self.on_stored(study_uid)
        return SUCCESS
