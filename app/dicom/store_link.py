"""The C-STORE sender's own association: one thread, straight from the file to the socket.

Why the desk does not send studies through pynetdicom's `Association`: its reactor hands
every PDU between two threads and builds each command set through pydicom, so on this
machine it tops out near 140 MB/s however it is tuned, while DCMTK's storescu moves the
same 1,000-instance CT at about 800 MB/s (bench/transfer.py, shared/PITFALLS.md). A
StoreLink speaks the same protocol on the calling thread: it reads each file's data set
in PDU-sized pieces into one reused buffer and writes each piece with its P-DATA header
in a single `sendall`; nothing is decoded, nothing is held beyond one PDU.

What is ours and what is pynetdicom's: the association PDUs (A-ASSOCIATE-RQ/AC/RJ,
A-ABORT) are encoded and decoded by pynetdicom's `pdu` classes. Written here, because
they are small and fixed: P-DATA-TF framing (PS3.8 9.3.5), the C-STORE-RQ command set
and the three fields of the response we act on (PS3.7 9.3.1, Implicit VR Little
Endian), the release handshake, and reading group 0002 of a Part 10 file to find where
its data set starts (PS3.10 7.1). Everything else the desk does over DICOM (C-ECHO,
C-FIND, C-GET/C-MOVE, the storage SCP) stays on pynetdicom.

Failures come back as `DicomFailure`s made by `app.dicom.errors.to_failure` from an
`AssociationOutcome`, so the words are the same as for every other operation.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from app.dicom.ae import MAX_CONTEXTS, AEConfig, Node
from app.dicom.errors import AssociationOutcome, DicomFailure, to_failure
from app.dicom.scp import valid_uid

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1

# PDU types, PS3.8 Table 9-11.
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)

# Message control header bits, PS3.8 E.2.
_COMMAND, _LAST = 0x01, 0x02

# C-STORE priorities, PS3.7 Table 9.3-1.
PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW = 0x0000, 0x0001, 0x0002

_PDU_HEADER = struct.Struct(">BxI")  # type, reserved, length
_PDATA_HEADER = struct.Struct(">BxIIBB")  # type, reserved, PDU length, item length, context, control
_ELEMENT = struct.Struct("<HHI")  # Implicit VR LE: group, element, length

# What we take from a peer before calling it a protocol error: an A-ASSOCIATE-AC carries at
# most 128 contexts and a few user items; a P-DATA answer to C-STORE is a few hundred bytes
# unless the peer fragments it, and our offered maximum PDU bounds each fragment.
_LARGEST_PDU = 4 * 1024 * 1024
_SEND_LIMIT = 1024 * 1024  # when the peer says "no limit" (0), we still cut data into 1 MB PDUs


class AssociationLost(Exception):
    """The association ended under an instance (A-ABORT, closed connection, a protocol
    error): the instance was not confirmed and should be sent again on a new association."""

    def __init__(self, failure: DicomFailure) -> None:
        super().__init__(failure.plain)
        self.failure = failure


class InstanceAbandoned(Exception):
    """This instance failed in a way that ended the association (no answer within the DIMSE
    timeout, the file unreadable half-way): the instance is failed, the association aborted."""

    def __init__(self, failure: DicomFailure) -> None:
        super().__init__(failure.plain)
        self.failure = failure


@dataclass(frozen=True)
class Part10:
    """What a sender needs from a Part 10 file's header."""

    sop_class: str
    sop_uid: str
    syntax: str
    data_offset: int  # where the data set starts: after the preamble, "DICM" and group 0002
    size: int  # the whole file's size


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_HEADER_LIMIT = 64 * 1024  # a file meta group larger than this is not one we will send


def read_part10(path: Path) -> Part10:
    """Group 0002 of a DICOM file (PS3.10 7.1), read with the file's own element lengths.

    Raises ValueError for anything that is not a well-formed Part 10 file with the three
    UIDs a C-STORE needs. Never reads past the file meta group.
    """
    with open(path, "rb") as fp:
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        head = fp.read(min(size, 4096))
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError("no DICM prefix: not a DICOM Part 10 file")
        values: dict[int, bytes] = {}
        pos = 132
        while True:
            if pos + 12 > len(head) and len(head) < min(size, _HEADER_LIMIT):
                head += fp.read(min(size, _HEADER_LIMIT) - len(head))
            if pos + 8 > len(head):
                if pos == size:
                    break  # a file of file meta and nothing else
                raise ValueError("file meta information is cut short")
            group, element = struct.unpack_from("<HH", head, pos)
            if group != 0x0002:
                break
            vr = head[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", head, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", head, pos + 6)
                start = pos + 8
            if length == 0xFFFFFFFF or start + length > _HEADER_LIMIT:
                raise ValueError("file meta information is malformed or too large")
            if start + length > len(head):
                head += fp.read(min(size, _HEADER_LIMIT) - len(head))
                if start + length > len(head):
                    raise ValueError("file meta information is cut short")
            values[element] = head[start:start + length]
            pos = start + length

    def uid(element: int, name: str) -> str:
        raw = values.get(element)
        text = raw.rstrip(b"\x00 ").decode("ascii", "replace") if raw else ""
        if not valid_uid(text):
            raise ValueError(f"file meta information has no valid {name}")
        return text

    return Part10(uid(0x0002, "Media Storage SOP Class UID"), uid(0x0003, "Media Storage SOP Instance UID"),
                  uid(0x0010, "Transfer Syntax UID"), pos, size)


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # PS3.5 9.1: UIDs are padded with NUL


def store_command(sop_class: str, sop_uid: str, message_id: int, priority: int) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, elements in tag order."""

    def element(tag: int, value: bytes) -> bytes:
        return _ELEMENT.pack(0x0000, tag, len(value)) + value

    body = b"".join((
        element(0x0002, _uid_value(sop_class)),  # Affected SOP Class UID
        element(0x0100, struct.pack("<H", 0x0001)),  # Command Field: C-STORE-RQ
        element(0x0110, struct.pack("<H", message_id)),  # Message ID
        element(0x0700, struct.pack("<H", priority)),  # Priority
        element(0x0800, struct.pack("<H", 0x0001)),  # Command Data Set Type: a data set follows
        element(0x1000, _uid_value(sop_uid)),  # Affected SOP Instance UID
    ))
    return element(0x0000, struct.pack("<I", len(body))) + body  # Command Group Length


class StoreLink:
    """One association to `node` for sending files with C-STORE; a context manager that
    releases on a clean exit and aborts on an exception. Not shared between threads."""

    def __init__(self, node: Node, pairs: Sequence[tuple[str, str]], *, config: AEConfig) -> None:
        if not 0 < len(pairs) <= MAX_CONTEXTS:
            raise ValueError(f"{len(pairs)} presentation contexts; 1 to {MAX_CONTEXTS} allowed")
        self.node = node
        self.config = config
        self._proposed = {2 * i + 1: (str(sop), str(ts)) for i, (sop, ts) in enumerate(pairs)}
        self._accepted: dict[tuple[str, str], int] = {}
        self._sock: socket.socket | None = None
        self._message_id = 0
        self._fragment = 0
        self._buffer = bytearray()

    # -- the association ---------------------------------------------------------------------------

    def __enter__(self) -> StoreLink:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.release()
        else:
            self.abort()

    def _outcome(self, **kwargs: object) -> AssociationOutcome:
        return AssociationOutcome(node=str(self.node), our_ae_title=self.config.ae_title, connected=True,
                                  **kwargs)  # type: ignore[arg-type]  # callers pass the dataclass's own fields

    def open(self) -> None:
        """Connect and negotiate. Raises DicomFailure if no usable association results."""
        timeouts = self.config.timeouts
        try:
            self._sock = socket.create_connection((self.node.host, self.node.port), timeout=timeouts.connection)
        except OSError as exc:
            raise to_failure(AssociationOutcome(node=str(self.node), our_ae_title=self.config.ae_title,
                                                connect_error=exc, timeout_seconds=timeouts.connection)) from None
        if self.config.tcp_nodelay:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(timeouts.acse)
        try:
            self._sock.sendall(self._associate_rq())
            kind, body = self._read_pdu()
        except TimeoutError:
            self._close()
            raise to_failure(self._outcome(timed_out=True, timeout_seconds=timeouts.acse)) from None
        except (OSError, _Closed):
            self._close()
            raise to_failure(self._outcome(closed_by_peer=True)) from None
        except _ProtocolError as error:
            self.abort()
            raise DicomFailure("protocol-error", f"the node answered our association request with "
                               f"something we cannot read ({error}) — ask the remote site", False) from None
        if kind == ASSOCIATE_RJ:
            self._close()
            reject = A_ASSOCIATE_RJ()
            try:
                reject.decode(body)
                result, source, reason = reject.result, reject.source, reject.reason_diagnostic
                if result is None or source is None or reason is None:
                    raise ValueError("a rejection without its result, source or reason")
                rejected = (int(result), int(source), int(reason))
            except Exception:  # noqa: BLE001 - bytes from outside: a rejection all the same
                rejected = (1, 0, 0)
            raise to_failure(self._outcome(rejected=rejected))
        if kind == ABORT:
            self._close()
            raise to_failure(self._outcome(abort_received=_abort_reason(body)))
        if kind != ASSOCIATE_AC:
            self.abort()
            raise DicomFailure("protocol-error", f"the node answered our association request with a PDU "
                               f"of type {kind} — ask the remote site", False)
        try:
            if len(body) < 74:  # PS3.8 9.3.3: the fixed fields alone are 74 bytes
                raise ValueError("too short")
            accept = A_ASSOCIATE_AC()
            accept.decode(body)
            primitive = accept.to_primitive()
        except Exception as exc:  # noqa: BLE001 - bytes from outside
            self.abort()
            raise DicomFailure("protocol-error", "the node accepted our association request in a form "
                               f"we cannot read ({type(exc).__name__}) — ask the remote site", False) from None
        for context in primitive.presentation_context_definition_results_list:
            context_id = context.context_id
            if context_id is None:  # decoded from the PDU, where every item has one (PS3.8 9.3.3.2)
                continue
            wanted = self._proposed.get(int(context_id))
            if wanted and context.result == 0 and context.transfer_syntax and \
                    str(context.transfer_syntax[0]) == wanted[1]:
                self._accepted[wanted] = int(context_id)
        peer_max = int(primitive.maximum_length_received or 0)
        # A P-DATA PDU's length covers its PDV item header (6 bytes) and the data.
        self._fragment = (min(peer_max, _SEND_LIMIT) if peer_max else _SEND_LIMIT) - 6
        if self._fragment < 256:
            self.abort()
            raise DicomFailure("protocol-error", f"the node accepts PDUs of {peer_max} bytes only, "
                               "too small to send anything — ask the remote site", False)
        self._buffer = bytearray(_PDATA_HEADER.size + self._fragment)
        if not self._accepted:
            self.release()
            raise to_failure(self._outcome(no_accepted_contexts=True))
        self._sock.settimeout(timeouts.dimse)

    def _associate_rq(self) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT)
        primitive.calling_ae_title = self.config.ae_title
        primitive.called_ae_title = self.node.ae_title
        contexts = []
        for context_id, (sop, ts) in self._proposed.items():
            context = PresentationContext()
            context.context_id = context_id
            context.abstract_syntax = UID(sop)
            context.transfer_syntax = [UID(ts)]
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.config.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        primitive.user_information = [max_length, implementation, version]
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        return request.encode()

    def context_for(self, sop_class: str, syntax: str) -> int | None:
        """The accepted presentation context for files of this kind, if any."""
        return self._accepted.get((sop_class, syntax))

    def accepted_syntaxes(self, sop_class: str) -> list[str]:
        """The transfer syntaxes the node accepted for this SOP class, in proposal order."""
        return [ts for sop, ts in self._accepted if sop == sop_class]

    def release(self) -> None:
        """A-RELEASE, bounded by the ACSE timeout; an abort if the node does not answer. Never raises."""
        if self._sock is None:
            return
        try:
            self._sock.settimeout(self.config.timeouts.acse)
            self._sock.sendall(_PDU_HEADER.pack(RELEASE_RQ, 4) + bytes(4))
            while True:
                kind, _ = self._read_pdu()
                if kind == RELEASE_RP:
                    break
                if kind == ABORT:
                    break
                if kind == RELEASE_RQ:  # a release collision (PS3.8 7.2.2): answer it
                    self._sock.sendall(_PDU_HEADER.pack(RELEASE_RP, 4) + bytes(4))
                # P-DATA arriving late is not ours to read any more
        except Exception:  # noqa: BLE001 - a release that goes wrong ends in an abort
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        """A-ABORT (service-user initiated), then close. Never raises."""
        if self._sock is None:
            return
        with contextlib.suppress(OSError):
            self._sock.settimeout(1.0)
            self._sock.sendall(_PDU_HEADER.pack(ABORT, 4) + bytes(4))
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # -- C-STORE -----------------------------------------------------------------------------------

    def store(self, path: Path, part10: Part10, context_id: int, *, priority: int = PRIORITY_MEDIUM) -> Dataset:
        """Send one file's data set as it is on disk; return the C-STORE-RSP command set.

        Raises AssociationLost (send the instance again elsewhere) or InstanceAbandoned
        (this instance failed and took the association with it). The file is opened before
        anything is sent, so an unreadable file raises OSError with the association intact.
        """
        if self._sock is None:
            raise AssociationLost(to_failure(self._outcome(closed_by_peer=True)))
        self._message_id = self._message_id % 0xFFFF + 1
        command = store_command(part10.sop_class, part10.sop_uid, self._message_id, priority)
        with open(path, "rb", buffering=0) as fp:
            fp.seek(part10.data_offset)
            try:
                self._send_pdv(context_id, command, _COMMAND | _LAST)
                self._send_data_set(fp, context_id, part10.size - part10.data_offset)
                return self._read_response()
            except TimeoutError:
                self.abort()
                seconds = self.config.timeouts.dimse
                raise InstanceAbandoned(to_failure(self._outcome(timed_out=True, timeout_seconds=seconds))) \
                    from None
            except (_Closed, OSError) as error:
                outcome = self._outcome(closed_by_peer=True, abort_received=getattr(error, "abort", None))
                if outcome.abort_received is None:
                    outcome.abort_received = self._abort_in_flight()
                self._close()
                raise AssociationLost(to_failure(outcome)) from None
            except _ProtocolError as error:
                self.abort()
                raise AssociationLost(DicomFailure("protocol-error", f"the node sent something we cannot "
                                                   f"read ({error}); the association was aborted", True)) \
                    from None
            except _FileBroken as error:
                self.abort()
                raise InstanceAbandoned(DicomFailure("unreadable-file", f"cannot read the file part-way "
                                                     f"through ({error})", False)) from None

    def _send_pdv(self, context_id: int, data: bytes, control: int) -> None:
        """Small data (a command set) in as many fragments as the peer's PDU allows."""
        assert self._sock is not None  # noqa: S101 - narrows the type; an invariant, not a check
        for start in range(0, max(len(data), 1), self._fragment):
            piece = data[start:start + self._fragment]
            last = control & _LAST if start + self._fragment >= len(data) else 0
            flags = (control & _COMMAND) | last
            self._sock.sendall(_PDATA_HEADER.pack(P_DATA_TF, len(piece) + 6, len(piece) + 2, context_id, flags)
                               + piece)

    def _send_data_set(self, fp: io.RawIOBase, context_id: int, remaining: int) -> None:
        """The data set, one PDU per `sendall`, read into the one reused buffer."""
        assert self._sock is not None  # noqa: S101 - narrows the type; an invariant, not a check
        header = _PDATA_HEADER.size
        view = memoryview(self._buffer)
        while True:
            want = min(self._fragment, remaining)
            got = 0
            while got < want:
                try:
                    n = fp.readinto(view[header + got:header + want])
                except OSError as exc:
                    raise _FileBroken(exc.strerror or type(exc).__name__) from None
                if not n:
                    raise _FileBroken("the file is shorter than when it was scanned")
                got += n
            remaining -= want
            flags = _LAST if remaining == 0 else 0
            _PDATA_HEADER.pack_into(self._buffer, 0, P_DATA_TF, want + 6, want + 2, context_id, flags)
            self._sock.sendall(view[:header + want])
            if remaining == 0:
                return

    def _read_response(self) -> Dataset:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            if kind == ABORT:
                raise _Closed(abort=_abort_reason(body))
            if kind != P_DATA_TF:
                raise _ProtocolError(f"a PDU of type {kind} while waiting for a C-STORE response")
            pos, done = 0, False
            while pos < len(body):
                if pos + 6 > len(body):
                    raise _ProtocolError("a PDV item is cut short")
                (length,) = struct.unpack_from(">I", body, pos)
                if length < 2 or pos + 4 + length > len(body):
                    raise _ProtocolError("a PDV item has a bad length")
                control = body[pos + 5]
                if control & _COMMAND:
                    command += body[pos + 6:pos + 4 + length]
                    done = done or bool(control & _LAST)
                pos += 4 + length
            if done:
                break
        fields = _command_fields(bytes(command))
        if fields.get(0x0100) != 0x8001:
            raise _ProtocolError(f"command {fields.get(0x0100)!r} instead of a C-STORE response")
        if fields.get(0x0120) != self._message_id:
            raise _ProtocolError("a response to another message")
        response = Dataset()
        if 0x0900 in fields:
            response.Status = fields[0x0900]
        if fields.get(0x0902):
            response.ErrorComment = fields[0x0902]
        return response

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._read_exact(6)
        kind, length = _PDU_HEADER.unpack(header)
        if length > _LARGEST_PDU:
            raise _ProtocolError(f"a PDU of {length} bytes")
        body = self._read_exact(length)
        # pynetdicom's PDU classes decode whole PDUs; P-DATA is parsed here from the body.
        return kind, (header + body if kind in (ASSOCIATE_AC, ASSOCIATE_RJ, ABORT) else body)

    def _read_exact(self, n: int) -> bytes:
        assert self._sock is not None  # noqa: S101 - narrows the type; an invariant, not a check
        chunks, left = [], n
        while left:
            chunk = self._sock.recv(left)
            if not chunk:
                raise _Closed()
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _abort_in_flight(self) -> tuple[int, int] | None:
        """After a send failed: an A-ABORT the node may have sent just before closing."""
        if self._sock is None:
            return None
        try:
            self._sock.settimeout(0.5)
            kind, body = self._read_pdu()
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return None
        return _abort_reason(body) if kind == ABORT else None


_US_FIELDS = {0x0100, 0x0120, 0x0900}  # Command Field, Message ID Being Responded To, Status
_TEXT_FIELDS = {0x0902}  # Error Comment


def _command_fields(data: bytes) -> dict[int, int | str]:
    """The few elements of a C-STORE-RSP command set (Implicit VR Little Endian) that a
    sender acts on, by element number. A hand walk: pydicom's decoder cost a tenth of
    the sender's CPU time for these three numbers."""
    fields: dict[int, int | str] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length == 0xFFFFFFFF or pos + length > len(data):
            raise _ProtocolError("a malformed response command set")
        if element in _US_FIELDS and length == 2:
            (fields[element],) = struct.unpack_from("<H", data, pos)
        elif element in _TEXT_FIELDS:
            fields[element] = data[pos:pos + length].decode("ascii", "replace").strip(" \x00")
        pos += length
    if pos != len(data):
        raise _ProtocolError("a response command set is cut short")
    return fields


def _abort_reason(body: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT PDU (PS3.8 9.3.8)."""
    abort = A_ABORT_RQ()
    with contextlib.suppress(Exception):
        abort.decode(body)
        return int(abort.source or 0), int(abort.reason_diagnostic or 0)
    return 0, 0


class _Closed(Exception):
    def __init__(self, abort: tuple[int, int] | None = None) -> None:
        super().__init__("connection closed")
        self.abort = abort


class _ProtocolError(Exception):
    pass


class _FileBroken(Exception):
    pass
