"""DIMSE on a socket, both ways: PDUs, P-DATA framing, command sets, data sets streamed.

The desk's own associations (the sender's `StoreLink`, the C-GET's `GetLink`, the gateway's
Storage SCP) all speak through a `Wire`: one socket, read and written on the calling thread,
with one reused receive buffer, so that a data set goes from the socket to its file (or from
its file to the socket) a PDU at a time and nothing holds more than one PDU of it. Why not
pynetdicom's `Association`: its reactor hands every PDU between two threads and decodes every
data set through pydicom, which capped the sender near 140 MB/s and the receivers near
80 MB/s on this machine, against DCMTK's 400-800 MB/s (bench/transfer.py, bench/receive.py).

What is ours and what is pynetdicom's: the association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-ABORT)
are encoded and decoded by pynetdicom's `pdu` classes; written here, because they are small
and fixed: P-DATA-TF framing (PS3.8 9.3.5, E.2), the command sets the desk sends and reads
(PS3.7 E.1: Implicit VR Little Endian, group 0000 only), and the release handshake.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterable

from pynetdicom.pdu import A_ABORT_RQ

# PDU types, PS3.8 Table 9-11.
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)

# Message control header bits, PS3.8 E.2.
COMMAND, LAST = 0x01, 0x02

PDU_HEADER = struct.Struct(">BxI")  # type, reserved, length
PDATA_HEADER = struct.Struct(">BxIIBB")  # type, reserved, PDU length, item length, context, control
_PDV_HEADER = struct.Struct(">IBB")  # item length, context, control
_ELEMENT = struct.Struct("<HHI")  # Implicit VR LE: group, element, length

# The largest PDU we take from a peer, whatever we offered: an A-ASSOCIATE-RQ with 128
# contexts of many syntaxes is tens of kB; a peer that ignores our maximum PDU gets this
# much slack before it is a protocol error.
LARGEST_PDU = 4 * 1024 * 1024
# A command set is a few hundred bytes; one this large is an attack or a bug.
LARGEST_COMMAND = 64 * 1024

# Command Field values, PS3.7 E.1-1.
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows

# Command elements (group 0000) by element number, PS3.7 E.1-1.
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDED_TO = 0x0120
PRIORITY = 0x0700
DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023


class Closed(Exception):
    """The connection ended (closed, or an A-ABORT arrived: `abort` is its source, reason)."""

    def __init__(self, abort: tuple[int, int] | None = None) -> None:
        super().__init__("association aborted" if abort else "connection closed")
        self.abort = abort


class ReleaseRequested(Exception):
    """The peer sent A-RELEASE-RQ where a message could start."""


class ProtocolError(Exception):
    """The peer sent bytes that break the protocol; the association must be aborted."""


def abort_reason(pdu: bytes) -> tuple[int, int]:
    """(source, reason) of a whole A-ABORT PDU (PS3.8 9.3.8). Never raises."""
    abort = A_ABORT_RQ()
    with contextlib.suppress(Exception):
        abort.decode(pdu)
        return int(abort.source or 0), int(abort.reason_diagnostic or 0)
    return 0, 0


# -- command sets ---------------------------------------------------------------------------


def uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # PS3.5 9.1: UIDs are padded with NUL


def us_value(number: int) -> bytes:
    return struct.pack("<H", number)


def text_value(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def encode_command(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """A command set from (element, value) pairs of group 0000, in ascending element order,
    with its Command Group Length."""
    body = b"".join(_ELEMENT.pack(0x0000, element, len(value)) + value for element, value in elements)
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


class Command(dict[int, bytes]):
    """A command set read from a peer: element number -> raw value (group 0000 only)."""

    def us(self, element: int) -> int | None:
        raw = self.get(element)
        return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None

    def ul(self, element: int) -> int | None:
        raw = self.get(element)
        return struct.unpack("<I", raw)[0] if raw is not None and len(raw) == 4 else None

    def text(self, element: int) -> str:
        raw = self.get(element)
        return raw.decode("ascii", "replace").strip(" \x00") if raw else ""

    @property
    def field(self) -> int | None:
        return self.us(COMMAND_FIELD)

    @property
    def has_data_set(self) -> bool:
        return self.us(DATA_SET_TYPE) not in (None, NO_DATA_SET)


def parse_command(data: bytes) -> Command:
    """A command set (Implicit VR Little Endian, PS3.7 6.3.1). Raises ProtocolError if it is
    not one. A hand walk: pydicom's decoder cost a tenth of the sender's CPU time."""
    fields = Command()
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length == 0xFFFFFFFF or pos + length > len(data):
            raise ProtocolError("a malformed command set")
        fields[element] = bytes(data[pos:pos + length])
        pos += length
    if pos != len(data):
        raise ProtocolError("a command set is cut short")
    if fields.field is None:
        raise ProtocolError("a command set without its Command Field")
    return fields


# -- the wire ------------------------------------------------------------------------------


class Wire:
    """One association's socket. Not shared between threads.

    Reading: `read_pdu` for the association PDUs; `read_command` and `read_data_set` for
    DIMSE messages, which walk the PDVs of P-DATA-TF PDUs read into one reused buffer.
    Writing: `send_pdu`, `send_message`; `send_data_from` streams a file-like object.
    """

    def __init__(self, sock: socket.socket, *, fragment: int = 16 * 1024 - 6) -> None:
        self.sock = sock
        self.fragment = fragment  # the largest PDV value we send: the peer's maximum PDU - 6
        self._buf = bytearray(256 * 1024)
        self._view = memoryview(self._buf)
        self._pdu_end = 0  # bytes of the current P-DATA body in _buf
        self._pos = 0  # the next PDV in it

    # -- PDUs --------------------------------------------------------------------------------

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def read_exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise Closed()
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:])
            if not n:
                raise Closed()
            got += n

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU: its type and the whole PDU (header included), for pynetdicom's
        decoders. For association PDUs; a P-DATA body that arrives here is returned too."""
        header = self.read_exact(6)
        kind, length = PDU_HEADER.unpack(header)
        if length > LARGEST_PDU:
            raise ProtocolError(f"a PDU of {length} bytes")
        return kind, header + self.read_exact(length)

    def send_pdu(self, kind: int, body: bytes) -> None:
        self.sock.sendall(PDU_HEADER.pack(kind, len(body)) + body)

    def send_abort(self) -> None:
        """A-ABORT (service-user initiated). Never raises."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(1.0)
            self.send_pdu(ABORT, bytes(4))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- P-DATA in -----------------------------------------------------------------------------

    def _next_pdv(self, *, between_messages: bool) -> tuple[int, int, memoryview]:
        """(context id, control, value) of the next PDV: a view of the reused buffer, valid
        until the next call. Reads the next P-DATA-TF PDU when the current one is spent.

        Raises ReleaseRequested for an A-RELEASE-RQ between messages, Closed for an A-ABORT
        or a closed connection, ProtocolError for anything else out of place."""
        while self._pos >= self._pdu_end:
            header = self.read_exact(6)
            kind, length = PDU_HEADER.unpack(header)
            if length > LARGEST_PDU:
                raise ProtocolError(f"a PDU of {length} bytes")
            if kind != P_DATA_TF:
                body = self.read_exact(length)
                if kind == ABORT:
                    raise Closed(abort=abort_reason(header + body))
                if kind == RELEASE_RQ and between_messages:
                    raise ReleaseRequested()
                raise ProtocolError(f"a PDU of type {kind} inside a DIMSE exchange")
            if length > len(self._buf):
                self._buf = bytearray(length)
                self._view = memoryview(self._buf)
            self._read_into(self._view[:length])
            self._pdu_end, self._pos = length, 0
            between_messages = False  # a release cannot follow half a PDU
        if self._pos + 6 > self._pdu_end:
            raise ProtocolError("a PDV item is cut short")
        length, context_id, control = _PDV_HEADER.unpack_from(self._buf, self._pos)
        start, end = self._pos + 6, self._pos + 4 + length
        if length < 2 or end > self._pdu_end:
            raise ProtocolError("a PDV item has a bad length")
        self._pos = end
        return context_id, control, self._view[start:end]

    def read_command(self) -> tuple[int, Command]:
        """The next message's command set, and the context it came on. Raises
        ReleaseRequested if the peer releases instead (nothing of a message read yet)."""
        data = bytearray()
        context = None
        first = True
        while True:
            context_id, control, value = self._next_pdv(between_messages=first)
            first = False
            if not control & COMMAND:
                raise ProtocolError("data set fragment where a command was expected")
            if context is not None and context_id != context:
                raise ProtocolError("a command split over two presentation contexts")
            context = context_id
            data += value
            if len(data) > LARGEST_COMMAND:
                raise ProtocolError("a command set larger than 64 kB")
            if control & LAST:
                return context_id, parse_command(bytes(data))

    def read_data_set(self, context_id: int, sink: Callable[[memoryview], object]) -> int:
        """The data set that follows a command on `context_id`, handed to `sink` a PDV at a
        time as it arrives (the view is valid only during the call); its size in bytes."""
        size = 0
        while True:
            pdv_context, control, value = self._next_pdv(between_messages=False)
            if control & COMMAND:
                raise ProtocolError("a command fragment inside a data set")
            if pdv_context != context_id:
                raise ProtocolError("a data set split over two presentation contexts")
            sink(value)
            size += len(value)
            if control & LAST:
                return size

    # -- P-DATA out ----------------------------------------------------------------------------

    def send_pdv(self, context_id: int, data: bytes, control: int) -> None:
        """Small data (a command set, a query) in as many fragments as the peer's PDU allows."""
        for start in range(0, max(len(data), 1), self.fragment):
            piece = data[start:start + self.fragment]
            last = control & LAST if start + self.fragment >= len(data) else 0
            flags = (control & COMMAND) | last
            self.sock.sendall(PDATA_HEADER.pack(P_DATA_TF, len(piece) + 6, len(piece) + 2, context_id, flags)
                              + piece)

    def send_message(self, context_id: int, command: bytes, data_set: bytes | None = None) -> None:
        """A whole DIMSE message whose data set (if any) is small enough to hold."""
        self.send_pdv(context_id, command, COMMAND | LAST)
        if data_set is not None:
            self.send_pdv(context_id, data_set, LAST)

    def release_as_acceptor(self, linger: float = 5.0) -> None:
        """Answer an A-RELEASE-RQ, then close once the peer has. Never raises."""
        with contextlib.suppress(OSError):
            self.send_pdu(RELEASE_RP, bytes(4))
        self.close_after_peer(linger)

    def close_after_peer(self, seconds: float) -> None:
        """Close once the peer has closed its side, or after `seconds` (PS3.8 9.1.5, the
        ARTIM timer): the requestor closes after reading our last PDU (A-ASSOCIATE-RJ,
        A-RELEASE-RP); closing first can make it see a dropped connection instead of
        reading the PDU. Never raises."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(seconds)
            while self.sock.recv(4096):
                pass
        self.close()
