"""The bytes of the DICOM upper layer that xrq's acceptor (interop/ul.py) reads and writes itself:
PDU headers (PS3.8 9.3.1), P-DATA-TF and its PDVs (9.3.5), the command set of a request and of a
C-STORE or C-ECHO response (PS3.7 9.3, implicit VR little endian), A-RELEASE-RP and A-ABORT; the
A-ASSOCIATE-RJ through pynetdicom's PDU class."""

from __future__ import annotations

import socket
import struct
import time

# PDU types (PS3.8 9.3.1)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
NO_DATA_SET = 0x0101
UNRECOGNIZED_OPERATION = 0x0211
CANNOT_UNDERSTAND = 0xC000
MAX_COMMAND = 64 * 1024  # a command set is a few hundred bytes
HEADER = struct.Struct(">BxI")  # type, reserved, length
PDV = struct.Struct(">IBB")  # item length, presentation context id, message control header
_ELEMENT = struct.Struct("<HHI")  # group, element, value length (implicit VR little endian)
MAX_ASSOCIATE_RQ = 1 << 20  # an A-ASSOCIATE-RQ with every storage class proposed is ~30 kB


class Abort(Exception):
    """Raised inside an association that must end with an A-P-ABORT (reason, PS3.8 9.3.8)."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def _read_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytearray:
    """`n` bytes; with a `deadline` (monotonic seconds) the whole read must end by then, so that a peer
    trickling a byte at a time cannot hold its connection past it."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the deadline passed")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the peer closed the connection")
        got += k
    return buf


def read_pdu(sock: socket.socket, limit: int, deadline: float | None = None) -> tuple[int, bytearray]:
    """One PDU: (type, variable field). A PDU longer than `limit` ends the association."""
    kind, length = HEADER.unpack(_read_exact(sock, HEADER.size, deadline))
    if length > limit:
        raise Abort(0x06, f"a PDU of {length} bytes, more than the {limit} announced")
    return kind, _read_exact(sock, length, deadline)


def uid_text(value: bytes | bytearray | memoryview) -> str:
    return bytes(value).rstrip(b"\0 ").decode("ascii", "replace")


def decode_command(command: bytes | bytearray) -> dict[int, bytes]:
    """A command set (group 0000, implicit VR little endian) as {element: value bytes}."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset + _ELEMENT.size <= len(command):
        group, element, length = _ELEMENT.unpack_from(command, offset)
        offset += _ELEMENT.size
        if group != 0 or offset + length > len(command):
            raise Abort(0x06, "a command set that is not group 0000")
        found[element] = bytes(command[offset:offset + length])
        offset += length
    return found


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def even(text: str, pad: bytes = b"\0") -> bytes:
    """A value padded to even length (PS3.5 7.1.1): UIDs with NUL, text with a space."""
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def encode_response(command_field: int, message_id: int, status: int, sop_class: str,
                    sop_instance: str | None) -> bytes:
    """The response command set (PS3.7 9.3.1.2, 9.3.5.2), elements in tag order, group length first."""
    elements = [(0x0002, even(sop_class)), (0x0100, _us(command_field | 0x8000)), (0x0120, _us(message_id)),
                (0x0800, _us(NO_DATA_SET)), (0x0900, _us(status))]
    if sop_instance is not None:
        elements.append((0x1000, even(sop_instance)))
    body = b"".join(_ELEMENT.pack(0, element, len(value)) + value for element, value in elements)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def p_data(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF with the whole command in one last-fragment PDV (a response is ~150 bytes)."""
    pdv = PDV.pack(len(command) + 2, context_id, 0x03) + command
    return HEADER.pack(P_DATA, len(pdv)) + pdv


def abort_pdu(reason: int = 0) -> bytes:
    return HEADER.pack(ABORT, 4) + bytes((0, 0, 2, reason))  # source 2: the service provider


RELEASE_RP_PDU = HEADER.pack(RELEASE_RP, 4) + bytes(4)


def us_value(raw: bytes | None) -> int:
    return struct.unpack("<H", raw[:2])[0] if raw and len(raw) >= 2 else -1


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    from pynetdicom.pdu import A_ASSOCIATE_RJ
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
