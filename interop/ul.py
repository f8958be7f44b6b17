"""xrq's DICOM acceptor: the upper layer (PS3.8) and the DIMSE of C-STORE and C-ECHO (PS3.7), one
blocking thread per association.

Why not pynetdicom's `AE.start_server`: its reactor polls in turns of a millisecond on two threads per
association, and on one association its Storage SCP, writing nothing durable, received 0.16 of DCMTK
storescp's rate here (bench/listen.py); no durable write can then reach half. Here a thread reads a
PDU with blocking reads and answers the moment the data set is whole. What is protocol knowledge stays
pynetdicom's: decoding the A-ASSOCIATE-RQ, negotiating the presentation contexts (and SCP/SCU roles),
encoding the A-ASSOCIATE-AC and -RJ. What is left is framing, a few lines each (interop/wire.py):
P-DATA-TF and its PDVs, the command set in implicit VR little endian, release and abort.

`Acceptor` knows nothing of inboxes: it asks `Services` whether a peer may associate and what status a
stored instance gets (interop/scp.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from interop.wire import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    CANNOT_UNDERSTAND,
    HEADER,
    MAX_ASSOCIATE_RQ,
    MAX_COMMAND,
    NO_DATA_SET,
    P_DATA,
    PDV,
    RELEASE_RP,
    RELEASE_RP_PDU,
    RELEASE_RQ,
    UNRECOGNIZED_OPERATION,
    Abort,
    abort_pdu,
    decode_command,
    encode_response,
    p_data,
    read_pdu,
    reject_pdu,
    uid_text,
    us_value,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Requestor:
    """The requestor of an association, as it called itself and where it called from."""
    aet: str
    host: str

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}"


@dataclass(frozen=True)
class Store:
    """One C-STORE request, whole: `data_set` is None when it passed `max_data_set_bytes` (then only
    its size is known)."""
    peer: Requestor
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data_set: bytes | bytearray | None
    size: int


class Services(Protocol):
    def admit(self, peer: Requestor) -> bool: ...
    def store(self, request: Store) -> int: ...


@dataclass(frozen=True)
class Limits:
    max_pdu: int = 4 * 1024 * 1024  # the Maximum Length we announce and hold peers to
    max_associations: int = 10
    max_data_set_bytes: int = 512 * 1024 * 1024
    artim: float = 30.0  # seconds to send the A-ASSOCIATE-RQ once connected
    idle: float = 60.0  # seconds of silence inside an association before it is aborted

    @property
    def max_connections(self) -> int:
        """Connections open at once, associated or not: beyond it a new one is closed unanswered (those
        over `max_associations` are answered with a rejection, so they need a few places too)."""
        return 2 * self.max_associations + 16


@dataclass
class _Message:
    """A DIMSE request being received over one presentation context."""
    context_id: int
    command: bytearray
    fields: dict[int, bytes] | None = None
    data: bytearray | None = None  # the data set as it comes (None: not begun, or no data set)
    size: int = 0


class Association:
    """One association, from the A-ASSOCIATE-RQ to its release or abort."""

    def __init__(self, acceptor: Acceptor, sock: socket.socket, host: str) -> None:
        self.acceptor, self.sock, self.host = acceptor, sock, host
        self.peer = Requestor("", host)
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted id -> (abstract syntax, transfer syntax)
        self.message: _Message | None = None

    def run(self) -> None:
        limits = self.acceptor.limits
        kind, body = read_pdu(self.sock, MAX_ASSOCIATE_RQ, deadline=time.monotonic() + limits.artim)
        if kind != ASSOCIATE_RQ:
            raise Abort(0x02, f"PDU type {kind} before an A-ASSOCIATE-RQ")
        if not self.acceptor.negotiate(self, body):
            return
        try:
            self.sock.settimeout(limits.idle)
            while True:
                kind, body = read_pdu(self.sock, limits.max_pdu + 1024)  # slack for peers that count headers
                if kind == P_DATA:
                    self.on_p_data(body)
                elif kind == RELEASE_RQ:
                    self.sock.sendall(RELEASE_RP_PDU)
                    return
                elif kind == ABORT:
                    log.info("%s aborted the association", self.peer)
                    return
                elif kind in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, RELEASE_RP):
                    raise Abort(0x02, f"an unexpected PDU (type {kind})")
                else:
                    raise Abort(0x01, f"an unrecognised PDU (type {kind})")
        finally:
            self.acceptor.leave()

    def on_p_data(self, body: bytearray) -> None:
        view, offset = memoryview(body), 0
        while offset + PDV.size <= len(body):
            length, context_id, header = PDV.unpack_from(body, offset)
            start, offset = offset + PDV.size, offset + 4 + length
            if length < 2 or offset > len(body):
                raise Abort(0x06, "a PDV that runs past its PDU")
            if context_id not in self.contexts:
                raise Abort(0x06, f"presentation context {context_id} was not accepted")
            self.on_fragment(context_id, header, view[start:offset])

    def on_fragment(self, context_id: int, header: int, data: memoryview) -> None:
        is_command, last = header & 0x01, header & 0x02
        message = self.message
        if is_command:
            if message is None:
                message = self.message = _Message(context_id, bytearray())
            elif message.fields is not None or message.context_id != context_id:
                raise Abort(0x02, "a command fragment inside a data set, or on another context")
            message.command += data
            if len(message.command) > MAX_COMMAND:
                raise Abort(0x06, f"a command set of more than {MAX_COMMAND} bytes")
            if last:
                message.fields = decode_command(message.command)
                if us_value(message.fields.get(0x0800)) == NO_DATA_SET:
                    self.dispatch(message)
                else:
                    message.data = bytearray()
            return
        if message is None or message.data is None or message.context_id != context_id:
            raise Abort(0x02, "a data set fragment without its command")
        message.size += len(data)
        if message.size <= self.acceptor.limits.max_data_set_bytes:
            message.data += data  # copied: a view would pin its whole PDU (tiny PDVs, a PDU each)
        elif message.data:
            message.data = bytearray()  # too large: count the rest, keep nothing
        if last:
            self.dispatch(message)

    def dispatch(self, message: _Message) -> None:
        self.message = None
        fields = message.fields or {}
        command = us_value(fields.get(0x0100))
        message_id = us_value(fields.get(0x0110))
        if command < 0 or (message_id < 0 and command != C_CANCEL_RQ):
            raise Abort(0x06, "a command set without its Command Field or Message ID")
        sop_class = uid_text(fields.get(0x0002, b""))
        sop_instance = uid_text(fields.get(0x1000, b""))
        if command == C_CANCEL_RQ:
            return  # answered by nothing (PS3.7 9.3.2.3); nothing here runs long enough to cancel
        if command == C_ECHO_RQ:
            status, instance = 0x0000, None
        elif command == C_STORE_RQ and message.data is None:
            log.warning("%s sent a C-STORE without a data set", self.peer)
            status, instance = CANNOT_UNDERSTAND, sop_instance
        elif command == C_STORE_RQ:
            whole = message.size <= self.acceptor.limits.max_data_set_bytes
            request = Store(self.peer, sop_class, sop_instance, self.contexts[message.context_id][1],
                            message.data if whole else None, message.size)
            status, instance = self.acceptor.services.store(request), sop_instance
        else:
            log.warning("%s asked for command 0x%04X, which xrq does not provide", self.peer, command)
            status, instance = UNRECOGNIZED_OPERATION, None
        response = encode_response(command, message_id, status, sop_class, instance)
        self.sock.sendall(p_data(message.context_id, response))


class Acceptor:
    """Listens on (host, port) and serves each association on its own thread."""

    def __init__(self, aet: str, address: tuple[str, int], contexts: list[Any], services: Services,
                 limits: Limits, implementation: tuple[str, str]) -> None:
        self.aet, self.address, self.contexts, self.services = aet, address, contexts, services
        self.limits, self.implementation = limits, implementation
        self._lock = threading.Lock()
        self._active = 0
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1]) if self._listener is not None else self.address[1]

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(self.address)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.25)  # how often the accept loop looks at `stop`
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="xrq-scp-accept", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:  # wakes each association's blocking read; it then ends
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:  # an instance being stored finishes (or fails) before the inbox closes
            thread.join(timeout=30)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, (host, _) = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # EMFILE, ENOBUFS, ECONNABORTED: the listener goes on
                if self._stopping.is_set():
                    return
                log.error("could not accept a connection: %s", exc)
                time.sleep(0.1)
                continue
            try:
                self._serve_in_thread(sock, host)
            except (OSError, RuntimeError) as exc:  # no thread to be had: this connection only is lost
                log.error("could not serve a connection from %s: %s", host, exc)
                sock.close()

    def _serve_in_thread(self, sock: socket.socket, host: str) -> None:
        with self._lock:
            crowded = len(self._threads) >= self.limits.max_connections
        if crowded:  # connections that never associate would each hold a thread until their ARTIM
            log.warning("closed a connection from %s: %d connections open already", host, len(self._threads))
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a response is one small write
        thread = threading.Thread(target=self._serve, args=(sock, host), name="xrq-scp-association", daemon=True)
        with self._lock:
            self._sockets.add(sock)
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._sockets.discard(sock)
                self._threads.discard(thread)
            raise

    def _serve(self, sock: socket.socket, host: str) -> None:
        association = Association(self, sock, host)
        try:
            association.run()
        except Abort as abort:
            log.warning("aborted the association with %s: %s", association.peer, abort)
            _last_word(sock, abort_pdu(abort.reason))
        except TimeoutError:
            log.warning("aborted the association with %s: silent past its timeout", association.peer)
            _last_word(sock, abort_pdu(0))
        except (ConnectionError, OSError) as exc:
            if not self._stopping.is_set():
                log.info("the connection from %s ended: %s", association.peer, exc)
        finally:
            with self._lock:
                self._sockets.discard(sock)
                self._threads.discard(threading.current_thread())
            sock.close()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def negotiate(self, association: Association, body: bytearray) -> bool:
        """Answer the A-ASSOCIATE-RQ: reject it (False) or accept the contexts we can serve (True)."""
        from pynetdicom.pdu import A_ASSOCIATE_RQ

        pdu = A_ASSOCIATE_RQ()
        try:
            pdu.decode(HEADER.pack(ASSOCIATE_RQ, len(body)) + bytes(body))
        except Exception as exc:  # a malformed request: pynetdicom's decoder raises several types
            raise Abort(0x06, f"an A-ASSOCIATE-RQ that cannot be decoded ({exc})") from exc
        request = pdu.to_primitive()
        association.peer = peer = Requestor(str(request.calling_ae_title).strip(), association.host)
        if not self.services.admit(peer):
            association.sock.sendall(reject_pdu(0x01, 0x01, 0x03))  # permanent, user, calling AE not recognised
            return False
        with self._lock:
            full = self._active >= self.limits.max_associations
            if not full:
                self._active += 1
        if full:
            log.warning("rejected an association from %s: %d associations at once already",
                        peer, self.limits.max_associations)
            association.sock.sendall(reject_pdu(0x02, 0x03, 0x02))  # transient, provider, local limit exceeded
            return False
        try:
            accept, contexts = self._accept_pdu(request)
            association.contexts = contexts
            association.sock.sendall(accept)
        except BaseException:
            self.leave()
            raise
        return True

    def _accept_pdu(self, request: Any) -> tuple[bytes, dict[int, tuple[str, str]]]:
        from pynetdicom._globals import APPLICATION_CONTEXT_NAME
        from pynetdicom.pdu import A_ASSOCIATE_AC
        from pynetdicom.pdu_primitives import (
            A_ASSOCIATE,
            ImplementationClassUIDNotification,
            ImplementationVersionNameNotification,
            MaximumLengthNotification,
            SCP_SCU_RoleSelectionNegotiation,
        )
        from pynetdicom.presentation import negotiate_as_acceptor

        roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in request.user_information
                 if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None}
        results, role_items = negotiate_as_acceptor(request.presentation_context_definition_list,
                                                    self.contexts, roles or None)
        accepted = {int(cx.context_id or 0): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in results if cx.result == 0x00}
        answer = A_ASSOCIATE()
        answer.application_context_name = APPLICATION_CONTEXT_NAME
        answer.calling_ae_title, answer.called_ae_title = request.calling_ae_title, request.called_ae_title
        answer.result, answer.result_source = 0x00, 0x01
        answer.presentation_context_definition_results_list = results
        length = MaximumLengthNotification()
        length.maximum_length_received = self.limits.max_pdu
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = self.implementation[0]
        name = ImplementationVersionNameNotification()
        name.implementation_version_name = self.implementation[1]
        answer.user_information = [length, uid, name, *role_items]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(answer)
        return pdu.encode(), accepted


def _last_word(sock: socket.socket, pdu: bytes) -> None:
    """Send an A-ABORT and close so that the peer can read it: a close with unread bytes waiting would
    reset the connection, and the peer could lose the abort. What the peer still sends is read and
    dropped for up to a second (a megabyte at most)."""
    with contextlib.suppress(OSError):
        sock.sendall(pdu)
        sock.shutdown(socket.SHUT_WR)
        deadline, drained = time.monotonic() + 1.0, 0
        while drained < 1 << 20 and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not (chunk := sock.recv(65536)):
                break
            drained += len(chunk)
