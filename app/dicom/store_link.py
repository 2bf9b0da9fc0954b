"""The associations the desk requests itself: `Link`, and `StoreLink` that sends files.

Why the desk does not send studies through pynetdicom's `Association`: its reactor hands
every PDU between two threads and builds each command set through pydicom, so on this
machine it tops out near 140 MB/s however it is tuned, while DCMTK's storescu moves the
same 1,000-instance CT at about 800 MB/s (bench/transfer.py, shared/PITFALLS.md). A
StoreLink speaks the same protocol on the calling thread: it reads each file's data set
in PDU-sized pieces into one reused buffer and writes each piece with its P-DATA header
in a single `sendall`; nothing is decoded, nothing is held beyond one PDU.

`Link` is the association itself (A-ASSOCIATE-RQ with our contexts and, for a C-GET, the
SCP role items; the AC or RJ read back; release and abort), spoken through a
`app.dicom.wire.Wire`; `app.dicom.get_link.GetLink` retrieves and
`app.dicom.find_link.FindLink` queries over one. The association PDUs are encoded and
decoded by pynetdicom's `pdu` classes; P-DATA framing and command sets are `wire`'s;
reading group 0002 of a Part 10 file to find where its data set starts (PS3.10 7.1) is
here. C-ECHO and C-MOVE stay on pynetdicom.

Failures come back as `DicomFailure`s made by `app.dicom.errors.to_failure` from an
`AssociationOutcome`, so the words are the same as for every other operation.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from app.dicom import wire
from app.dicom.ae import MAX_CONTEXTS, AEConfig, Node
from app.dicom.errors import AssociationOutcome, DicomFailure, to_failure
from app.dicom.scp import valid_uid
from app.dicom.wire import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    COMMAND,
    LAST,
    P_DATA_TF,
    PDATA_HEADER,
    RELEASE_RP,
    RELEASE_RQ,
    Closed,
    ProtocolError,
    ReleaseRequested,
    Wire,
    abort_reason,
    encode_command,
    uid_value,
    us_value,
)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1

# C-STORE priorities, PS3.7 Table 9.3-1.
PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW = 0x0000, 0x0001, 0x0002

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


def store_command(sop_class: str, sop_uid: str, message_id: int, priority: int) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, elements in tag order."""
    return encode_command((
        (wire.AFFECTED_SOP_CLASS, uid_value(sop_class)),
        (wire.COMMAND_FIELD, us_value(wire.C_STORE_RQ)),
        (wire.MESSAGE_ID, us_value(message_id)),
        (wire.PRIORITY, us_value(priority)),
        (wire.DATA_SET_TYPE, us_value(0x0001)),  # a data set follows
        (wire.AFFECTED_SOP_INSTANCE, uid_value(sop_uid)),
    ))


class Link:
    """One association we request from `node`, spoken over a `Wire` on the calling thread;
    a context manager that releases on a clean exit and aborts on an exception. Not shared
    between threads. `StoreLink` sends files with it; `app.dicom.get_link.GetLink` retrieves.

    `proposals` are (SOP class, transfer syntaxes) per presentation context; `scp_roles`
    the SOP classes for which we ask to be the SCP (SCP/SCU Role Selection, PS3.7 D.3.3.4:
    a C-GET's storage sub-operations)."""

    def __init__(self, node: Node, proposals: Sequence[tuple[str, Sequence[str]]], *, config: AEConfig,
                 scp_roles: Sequence[str] = ()) -> None:
        if not 0 < len(proposals) <= MAX_CONTEXTS:
            raise ValueError(f"{len(proposals)} presentation contexts; 1 to {MAX_CONTEXTS} allowed")
        self.node = node
        self.config = config
        self._proposed = {2 * i + 1: (str(sop), [str(ts) for ts in syntaxes])
                          for i, (sop, syntaxes) in enumerate(proposals)}
        self._scp_roles = list(dict.fromkeys(scp_roles))
        self._accepted: dict[tuple[str, str], int] = {}
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted: context id -> (SOP class, syntax)
        self.wire: Wire | None = None
        self._message_id = 0
        self.peer_max_pdu = 0

    # -- the association ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
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

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def open(self) -> None:
        """Connect and negotiate. Raises DicomFailure if no usable association results."""
        timeouts = self.config.timeouts
        try:
            sock = socket.create_connection((self.node.host, self.node.port), timeout=timeouts.connection)
        except OSError as exc:
            raise to_failure(AssociationOutcome(node=str(self.node), our_ae_title=self.config.ae_title,
                                                connect_error=exc, timeout_seconds=timeouts.connection)) from None
        if self.config.tcp_nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeouts.acse)
        self.wire = Wire(sock)
        try:
            sock.sendall(self._associate_rq())
            kind, pdu = self.wire.read_pdu()
        except TimeoutError:
            self._close()
            raise to_failure(self._outcome(timed_out=True, timeout_seconds=timeouts.acse)) from None
        except (OSError, Closed):
            self._close()
            raise to_failure(self._outcome(closed_by_peer=True)) from None
        except ProtocolError as error:
            self.abort()
            raise DicomFailure("protocol-error", f"the node answered our association request with "
                               f"something we cannot read ({error}) — ask the remote site", False) from None
        if kind == ASSOCIATE_RJ:
            self._close()
            reject = A_ASSOCIATE_RJ()
            try:
                reject.decode(pdu)
                result, source, reason = reject.result, reject.source, reject.reason_diagnostic
                if result is None or source is None or reason is None:
                    raise ValueError("a rejection without its result, source or reason")
                rejected = (int(result), int(source), int(reason))
            except Exception:  # noqa: BLE001 - bytes from outside: a rejection all the same
                rejected = (1, 0, 0)
            raise to_failure(self._outcome(rejected=rejected))
        if kind == ABORT:
            self._close()
            raise to_failure(self._outcome(abort_received=abort_reason(pdu)))
        if kind != ASSOCIATE_AC:
            self.abort()
            raise DicomFailure("protocol-error", f"the node answered our association request with a PDU "
                               f"of type {kind} — ask the remote site", False)
        try:
            if len(pdu) < 74:  # PS3.8 9.3.3: the fixed fields alone are 74 bytes
                raise ValueError("too short")
            accept = A_ASSOCIATE_AC()
            accept.decode(pdu)
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
                    str(context.transfer_syntax[0]) in wanted[1]:
                pair = (wanted[0], str(context.transfer_syntax[0]))
                self._accepted.setdefault(pair, int(context_id))
                self.contexts[int(context_id)] = pair
        self.peer_max_pdu = int(primitive.maximum_length_received or 0)
        # A P-DATA PDU's length covers its PDV item header (6 bytes) and the data.
        fragment = (min(self.peer_max_pdu, _SEND_LIMIT) if self.peer_max_pdu else _SEND_LIMIT) - 6
        if fragment < 256:
            self.abort()
            raise DicomFailure("protocol-error", f"the node accepts PDUs of {self.peer_max_pdu} bytes only, "
                               "too small to send anything — ask the remote site", False)
        self.wire.fragment = fragment
        if not self._accepted:
            self.release()
            raise to_failure(self._outcome(no_accepted_contexts=True))
        sock.settimeout(timeouts.dimse)

    def _associate_rq(self) -> bytes:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT)
        primitive.calling_ae_title = self.config.ae_title
        primitive.called_ae_title = self.node.ae_title
        contexts = []
        for context_id, (sop, syntaxes) in self._proposed.items():
            context = PresentationContext()
            context.context_id = context_id
            context.abstract_syntax = UID(sop)
            context.transfer_syntax = [UID(ts) for ts in syntaxes]
            contexts.append(context)
        primitive.presentation_context_definition_list = contexts
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.config.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        items: list[Any] = [max_length, implementation, version]
        for sop in self._scp_roles:
            role = SCP_SCU_RoleSelectionNegotiation()
            role.sop_class_uid = UID(sop)
            role.scu_role = False
            role.scp_role = True
            items.append(role)
        primitive.user_information = items
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
        if self.wire is None:
            return
        try:
            self.wire.settimeout(self.config.timeouts.acse)
            self.wire.send_pdu(RELEASE_RQ, bytes(4))
            while True:
                kind, _ = self.wire.read_pdu()
                if kind == RELEASE_RP:
                    break
                if kind == ABORT:
                    break
                if kind == RELEASE_RQ:  # a release collision (PS3.8 7.2.2): answer it
                    self.wire.send_pdu(RELEASE_RP, bytes(4))
                # P-DATA arriving late is not ours to read any more
        except Exception:  # noqa: BLE001 - a release that goes wrong ends in an abort
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        """A-ABORT (service-user initiated), then close. Never raises."""
        if self.wire is None:
            return
        self.wire.send_abort()
        self._close()

    def _close(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None

    def request_command(self, sop_class: str, field: int, message_id: int) -> bytes:
        """The command set of a C-FIND-RQ or C-GET-RQ (`field`) in `sop_class`, an
        identifier following, at medium priority."""
        return encode_command((
            (wire.AFFECTED_SOP_CLASS, uid_value(sop_class)),
            (wire.COMMAND_FIELD, us_value(field)),
            (wire.MESSAGE_ID, us_value(message_id)),
            (wire.PRIORITY, us_value(PRIORITY_MEDIUM)),
            (wire.DATA_SET_TYPE, us_value(0x0001)),  # an identifier follows
        ))

    def read_small(self, context_id: int, largest: int, what: str) -> bytes:
        """A data set read whole into memory (a response's identifier), at most `largest`
        bytes: a larger one is a ProtocolError naming `what`."""
        assert self.wire is not None  # noqa: S101 - narrows the type; the caller checked it
        data = bytearray()

        def keep(piece: memoryview) -> None:
            if len(data) + len(piece) > largest:
                raise ProtocolError(f"{what} larger than {largest // (1024 * 1024)} MB")
            data.extend(piece)

        self.wire.read_data_set(context_id, keep)
        return bytes(data)

    @contextlib.contextmanager
    def exchange(self, doing: str) -> Iterator[None]:
        """Around one request and its responses (a search, a retrieval), each way it can fail
        as a DicomFailure: the node silent past the DIMSE timeout (aborted here), the node
        releasing before its final response (answered), the association gone (with the
        node's A-ABORT if it sent one), or something we cannot read (aborted here)."""
        try:
            yield
        except TimeoutError:
            self.abort()
            raise to_failure(self._outcome(timed_out=True, timeout_seconds=self.config.timeouts.dimse)) from None
        except ReleaseRequested:
            # The node ends the association before its final response: answer, and say so.
            assert self.wire is not None  # noqa: S101 - narrows the type; set until _close
            self.wire.release_as_acceptor()
            self._close()
            raise to_failure(self._outcome(closed_by_peer=True)) from None
        except (Closed, OSError) as error:
            outcome = self._outcome(closed_by_peer=True, abort_received=getattr(error, "abort", None))
            if outcome.abort_received is None:
                outcome.abort_received = self.abort_in_flight()
            self._close()
            raise to_failure(outcome) from None
        except ProtocolError as error:
            self.abort()
            raise DicomFailure("protocol-error", f"the node sent something we cannot read during the "
                               f"{doing} ({error}); the association was aborted — ask the remote site "
                               "if it keeps happening", True) from None

    def abort_in_flight(self) -> tuple[int, int] | None:
        """After a send failed: an A-ABORT the node may have sent just before closing."""
        if self.wire is None:
            return None
        try:
            self.wire.settimeout(0.5)
            kind, pdu = self.wire.read_pdu()
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return None
        return abort_reason(pdu) if kind == ABORT else None


class StoreLink(Link):
    """One association to `node` for sending files with C-STORE, one transfer syntax per
    presentation context (`pairs` of SOP class and syntax)."""

    def __init__(self, node: Node, pairs: Sequence[tuple[str, str]], *, config: AEConfig) -> None:
        super().__init__(node, [(sop, [ts]) for sop, ts in pairs], config=config)
        self._buffer = bytearray()

    # -- C-STORE -----------------------------------------------------------------------------------

    def store(self, path: Path, part10: Part10, context_id: int, *, priority: int = PRIORITY_MEDIUM) -> Dataset:
        """Send one file's data set as it is on disk; return the C-STORE-RSP command set.

        Raises AssociationLost (send the instance again elsewhere) or InstanceAbandoned
        (this instance failed and took the association with it). The file is opened before
        anything is sent, so an unreadable file raises OSError with the association intact.
        """
        if self.wire is None:
            raise AssociationLost(to_failure(self._outcome(closed_by_peer=True)))
        message_id = self.next_message_id()
        command = store_command(part10.sop_class, part10.sop_uid, message_id, priority)
        with open(path, "rb", buffering=0) as fp:
            fp.seek(part10.data_offset)
            try:
                self.wire.send_pdv(context_id, command, COMMAND | LAST)
                self._send_data_set(fp, context_id, part10.size - part10.data_offset)
                return self._read_response(message_id)
            except TimeoutError:
                self.abort()
                seconds = self.config.timeouts.dimse
                raise InstanceAbandoned(to_failure(self._outcome(timed_out=True, timeout_seconds=seconds))) \
                    from None
            except (Closed, OSError) as error:
                outcome = self._outcome(closed_by_peer=True, abort_received=getattr(error, "abort", None))
                if outcome.abort_received is None:
                    outcome.abort_received = self.abort_in_flight()
                self._close()
                raise AssociationLost(to_failure(outcome)) from None
            except ProtocolError as error:
                self.abort()
                raise AssociationLost(DicomFailure("protocol-error", f"the node sent something we cannot "
                                                   f"read ({error}); the association was aborted", True)) \
                    from None
            except _FileBroken as error:
                self.abort()
                raise InstanceAbandoned(DicomFailure("unreadable-file", f"cannot read the file part-way "
                                                     f"through ({error})", False)) from None

    def _send_data_set(self, fp: io.RawIOBase, context_id: int, remaining: int) -> None:
        """The data set, one PDU per `sendall`, read into the one reused buffer."""
        assert self.wire is not None  # noqa: S101 - narrows the type; an invariant, not a check
        fragment = self.wire.fragment
        header = PDATA_HEADER.size
        if len(self._buffer) != header + fragment:
            self._buffer = bytearray(header + fragment)
        view = memoryview(self._buffer)
        while True:
            want = min(fragment, remaining)
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
            flags = LAST if remaining == 0 else 0
            PDATA_HEADER.pack_into(self._buffer, 0, P_DATA_TF, want + 6, want + 2, context_id, flags)
            self.wire.sock.sendall(view[:header + want])
            if remaining == 0:
                return

    def _read_response(self, message_id: int) -> Dataset:
        assert self.wire is not None  # noqa: S101 - narrows the type; an invariant, not a check
        try:
            _, fields = self.wire.read_command()
        except ReleaseRequested:
            raise ProtocolError("a release request while waiting for a C-STORE response") from None
        if fields.field != wire.C_STORE_RSP:
            raise ProtocolError(f"command {fields.field!r} instead of a C-STORE response")
        if fields.us(wire.RESPONDED_TO) != message_id:
            raise ProtocolError("a response to another message")
        response = Dataset()
        status = fields.us(wire.STATUS)
        if status is not None:
            response.Status = status
        comment = fields.text(wire.ERROR_COMMENT)
        if comment:
            response.ErrorComment = comment
        return response


class _FileBroken(Exception):
    pass
