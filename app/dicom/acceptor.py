"""The gateway's listening side: associations we accept, each served on a thread of its own.

`StorageServer` listens, negotiates each association (pynetdicom's PDU classes encode and
decode A-ASSOCIATE-RQ/AC/RJ) and then serves C-ECHO and C-STORE on the association's own
thread through a `Wire`: each C-STORE's data set goes from the socket into an
`scp.Incoming` a PDU at a time, as DCMTK's storescp writes it, and is settled (checked,
renamed or quarantined) before the response goes back. Several senders are served at
once, each on its thread; beyond `max_associations` a new one is rejected as transient
("local limit exceeded", PS3.8 Table 9-21), as pynetdicom's server did.

The policy of what is accepted is the gateway's (scp.GatewaySCP): the called AE title must
be ours; Verification, and the storage SOP classes in the syntaxes of
`ae.RECEIVE_TRANSFER_SYNTAXES` — the *sender's* first choice among them, so a file
arrives in the syntax it was stored in (no transcoding by the sender, byte for byte).

Time-outs, from the AEConfig: `acse` for the association request and the release;
`network` for an idle association between messages (then A-ABORT); `dimse` within a
message (a sender that stops half-way through a data set is aborted, and the partial
instance removed).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from app.dicom import wire
from app.dicom.ae import RECEIVE_TRANSFER_SYNTAXES, AEConfig
from app.dicom.wire import (
    ASSOCIATE_RQ,
    Closed,
    Command,
    ProtocolError,
    ReleaseRequested,
    Wire,
    encode_command,
    text_value,
    uid_value,
    us_value,
)

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
STORAGE_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax)
RECEIVE_SYNTAXES = frozenset(RECEIVE_TRANSFER_SYNTAXES)

# Presentation context results, PS3.8 Table 9-18.
ACCEPTANCE, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
REJECT_CONTEXT_NAME = (1, 1, 2)  # permanent, service-user: application context name not supported
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service-user: called AE title not recognized
REJECT_LIMIT = (2, 3, 2)  # transient, service-provider (presentation): local limit exceeded

STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4.2.1.4 Refused: SOP Class not supported


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE-RQ as the gateway needs it: what it says it carries, and from whom."""

    sop_class: str
    sop_uid: str
    syntax: str
    calling_ae: str
    peer: str
    association: int  # the association's serial number in this server


@dataclass
class StoreOutcome:
    """The answer to one C-STORE."""

    status: int
    comment: str = ""


class Sink(Protocol):
    """Where one arriving data set goes, a piece at a time (`scp.Incoming`)."""

    def write(self, piece: memoryview) -> object: ...

    def discard(self) -> None: ...


class StoreHandler(Protocol):
    """What a StorageServer calls for each C-STORE, on the association's thread: the
    gateway's policy lives there (scp.GatewaySCP). None of these may raise."""

    def begin(self, request: StoreRequest) -> Sink:
        """A sink for the data set about to arrive."""

    def finish(self, request: StoreRequest, sink: Sink) -> StoreOutcome:
        """The whole data set is in the sink: settle it and say what to answer."""

    def answered(self, association: int) -> None:
        """A C-STORE's response is on its way: the sender is busy with its next message, so
        the handler may prepare for it now (the gateway makes the next temporary file)."""

    def association_ended(self, association: int, released: bool) -> None:
        """Once per accepted association, when it is over (released: the sender said so)."""


@dataclass
class StorageServer:
    """Listen on (bind, port); serve every association on a thread of its own."""

    ae_title: str
    bind: str
    port: int
    handler: StoreHandler
    config: AEConfig
    max_associations: int = 10
    _listener: socket.socket | None = field(default=None, init=False, repr=False)
    _accept_thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _live: dict[int, tuple[threading.Thread, socket.socket]] = field(default_factory=dict, init=False, repr=False)
    _associations: set[int] = field(default_factory=set, init=False, repr=False)  # accepted, not yet over
    _serial: int = field(default=0, init=False, repr=False)

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.bind, self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.2)  # how often the accept loop looks at the stop flag
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"scp-{self.port}-accept",
                                               daemon=True)
        self._accept_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, abort live associations (their partial instances are removed),
        and wait for their threads."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
            self._accept_thread = None
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        with self._lock:
            live = list(self._live.values())
        for _, sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread, _ in live:
            thread.join(timeout)

    def live_sockets(self) -> list[socket.socket]:
        """The sockets of the associations being served now (for diagnostics and tests)."""
        with self._lock:
            return [sock for _, sock in self._live.values()]

    def _accept_loop(self) -> None:
        assert self._listener is not None  # noqa: S101 - narrows the type; set by start()
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                continue
            with self._lock:
                self._serial += 1
                serial = self._serial
                thread = threading.Thread(target=self._serve, args=(serial, sock, address),
                                          name=f"scp-{self.port}-{serial}", daemon=True)
                self._live[serial] = (thread, sock)
            thread.start()

    # -- one association -----------------------------------------------------------------------

    def _serve(self, serial: int, sock: socket.socket, address: tuple[str, int]) -> None:
        peer = f"{address[0]}:{address[1]}"
        link = Wire(sock)
        accepted = False
        released = False
        try:
            if self.config.tcp_nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.config.timeouts.acse)
            negotiated = self._negotiate(link, serial)
            if negotiated is None:
                return
            accepted = True
            contexts, calling = negotiated
            released = self._serve_messages(link, serial, contexts, calling, peer)
        except Exception:  # noqa: BLE001 - one association's failure must not stop the server
            log.exception("association from %s failed", peer)
            link.send_abort()
        finally:
            link.close()
            with self._lock:
                self._live.pop(serial, None)
                self._associations.discard(serial)
            if accepted:
                try:
                    self.handler.association_ended(serial, released)
                except Exception:  # noqa: BLE001 - the instances are stored; only the hint is lost
                    log.exception("association_ended failed")

    def _negotiate(self, link: Wire, serial: int) -> tuple[dict[int, tuple[str, str]], str] | None:
        """Read the A-ASSOCIATE-RQ and answer it: (accepted contexts, calling AE) or None
        when the association was rejected or never asked for."""
        try:
            kind, pdu = link.read_pdu()
        except (TimeoutError, OSError, Closed, ProtocolError):
            return None  # a port scan, a health check, a sender that gave up: nothing to answer
        if kind != ASSOCIATE_RQ:
            link.send_abort()
            return None
        try:
            request = A_ASSOCIATE_RQ()
            request.decode(pdu)
            primitive = request.to_primitive()
        except Exception:  # noqa: BLE001 - bytes from outside
            log.warning("an unreadable association request; aborted")
            link.send_abort()
            return None
        called = str(primitive.called_ae_title or "").strip()
        calling = str(primitive.calling_ae_title or "").strip()
        if str(primitive.application_context_name or "") != APPLICATION_CONTEXT:
            self._reject(link, REJECT_CONTEXT_NAME)
            return None
        if called != self.ae_title.strip():
            log.info("association from %s refused: called AE title %r is not ours", calling, called)
            self._reject(link, REJECT_CALLED_AE)
            return None
        with self._lock:
            busy = len(self._associations) >= self.max_associations
            if not busy:
                self._associations.add(serial)  # counted from here: a rejected one never is
        if busy:
            log.warning("association from %s refused: %d associations already", calling, self.max_associations)
            self._reject(link, REJECT_LIMIT)
            return None
        results: list[PresentationContext] = []
        accepted: dict[int, tuple[str, str]] = {}
        for proposed in primitive.presentation_context_definition_list:
            context = PresentationContext()
            context.context_id = proposed.context_id
            context.abstract_syntax = proposed.abstract_syntax
            sop = str(proposed.abstract_syntax or "")
            offered = [str(ts) for ts in proposed.transfer_syntax]
            allowed = {IMPLICIT_LE, EXPLICIT_LE} if sop == VERIFICATION else \
                RECEIVE_SYNTAXES if sop in STORAGE_CLASSES else None
            choice = next((ts for ts in offered if allowed and ts in allowed), None)
            if allowed is None:
                context.result = ABSTRACT_SYNTAX_NOT_SUPPORTED
                context.transfer_syntax = [UID(offered[0] if offered else IMPLICIT_LE)]
            elif choice is None:
                context.result = TRANSFER_SYNTAXES_NOT_SUPPORTED
                context.transfer_syntax = [UID(offered[0] if offered else IMPLICIT_LE)]
            else:
                context.result = ACCEPTANCE
                context.transfer_syntax = [UID(choice)]
                accepted[int(proposed.context_id or 0)] = (sop, choice)
            results.append(context)
        peer_max = 0
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
        link.fragment = (min(peer_max, 1024 * 1024) if peer_max else 1024 * 1024) - 6
        if link.fragment < 256:
            link.send_abort()
            return None
        answer = A_ASSOCIATE()
        answer.application_context_name = UID(APPLICATION_CONTEXT)
        answer.called_ae_title = primitive.called_ae_title
        answer.calling_ae_title = primitive.calling_ae_title
        answer.result = 0
        answer.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.config.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        answer.user_information = [max_length, implementation, version]
        pdu_out = A_ASSOCIATE_AC()
        pdu_out.from_primitive(answer)
        link.sock.sendall(pdu_out.encode())
        return accepted, calling

    def _reject(self, link: Wire, reason: tuple[int, int, int]) -> None:
        """A-ASSOCIATE-RJ; the connection is closed once the requestor has closed it."""
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = reason
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(primitive)
        with contextlib.suppress(OSError):
            link.sock.sendall(pdu.encode())
        link.close_after_peer(min(self.config.timeouts.acse, 5.0))

    def _serve_messages(self, link: Wire, serial: int, contexts: dict[int, tuple[str, str]], calling: str,
                        peer: str) -> bool:
        """C-ECHO and C-STORE until the sender releases (True) or the association ends
        otherwise (False)."""
        timeouts = self.config.timeouts
        while True:
            waiting = "idle"  # between messages (network timeout), then inside one (DIMSE)
            try:
                link.settimeout(timeouts.network)
                context_id, command = link.read_command()
                waiting = "silent mid-message"
                link.settimeout(timeouts.dimse)
                self._answer(link, serial, contexts, context_id, command, calling, peer)
            except ReleaseRequested:
                link.release_as_acceptor(min(timeouts.acse, 5.0))
                return True
            except TimeoutError:
                seconds = timeouts.network if waiting == "idle" else timeouts.dimse
                log.info("association from %s %s for %ss; aborted", calling, waiting, seconds)
                link.send_abort()
                return False
            except (Closed, OSError):
                return False
            except ProtocolError as error:
                log.warning("association from %s aborted: %s", calling, error)
                link.send_abort()
                return False

    def _answer(self, link: Wire, serial: int, contexts: dict[int, tuple[str, str]], context_id: int,
                command: Command, calling: str, peer: str) -> None:
        """Serve one message; ProtocolError if the association must be aborted."""
        if context_id not in contexts:
            raise ProtocolError(f"a message on presentation context {context_id}, which was not accepted")
        sop, syntax = contexts[context_id]
        message_id = command.us(wire.MESSAGE_ID)
        if message_id is None:
            raise ProtocolError("a request without its Message ID")
        if command.field == wire.C_ECHO_RQ and sop == VERIFICATION:
            if command.has_data_set:
                raise ProtocolError("a C-ECHO with a data set")
            link.send_message(context_id, encode_command((
                (wire.AFFECTED_SOP_CLASS, uid_value(VERIFICATION)),
                (wire.COMMAND_FIELD, us_value(wire.C_ECHO_RSP)),
                (wire.RESPONDED_TO, us_value(message_id)),
                (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET)),
                (wire.STATUS, us_value(0)),
            )))
            return
        if command.field != wire.C_STORE_RQ or sop == VERIFICATION:
            raise ProtocolError(f"command 0x{command.field or 0:04X} on a {sop} context")
        if not command.has_data_set:
            raise ProtocolError("a C-STORE without its data set")
        sop_class = command.text(wire.AFFECTED_SOP_CLASS)
        sop_uid = command.text(wire.AFFECTED_SOP_INSTANCE)
        if sop_class != sop:
            link.read_data_set(context_id, lambda piece: None)
            outcome = StoreOutcome(STATUS_SOP_CLASS_NOT_SUPPORTED,
                                   "SOP Class differs from the presentation context's")
        else:
            request = StoreRequest(sop_class, sop_uid, syntax, calling, peer, serial)
            sink = self.handler.begin(request)
            try:
                link.read_data_set(context_id, sink.write)
            except BaseException:
                sink.discard()
                raise
            outcome = self.handler.finish(request, sink)
        fields = [
            (wire.AFFECTED_SOP_CLASS, uid_value(sop_class or sop)),
            (wire.COMMAND_FIELD, us_value(wire.C_STORE_RSP)),
            (wire.RESPONDED_TO, us_value(message_id)),
            (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET)),
            (wire.STATUS, us_value(outcome.status)),
        ]
        if outcome.comment and outcome.status != 0:
            # (0000,0902) Error Comment, LO: at most 64 characters (PS3.7 C.4.1.1.3).
            fields.append((wire.ERROR_COMMENT, text_value(outcome.comment[:64])))
        if sop_uid:
            fields.append((wire.AFFECTED_SOP_INSTANCE, uid_value(sop_uid[:64])))
        link.send_message(context_id, encode_command(fields))
        self.handler.answered(serial)

