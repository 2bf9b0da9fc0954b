"""The C-GET retriever's own association: each instance from the socket straight to its file.

Why not pynetdicom's `Association` (what retrieval used before): its reactor hands every PDU
between two threads and decodes each arriving data set through pydicom before our handler
sees it, which held a C-GET from Orthanc near 80 MB/s, against about 440 MB/s for DCMTK's
getscu from the same Orthanc (issue 15). A `GetLink` speaks the protocol on the calling
thread over a `Wire`: each C-STORE sub-operation's data set is handed to an
`app.dicom.scp.Incoming` a PDV at a time as it arrives (nothing decoded, nothing held beyond
one PDU), settled by the same checks the gateway makes, and answered with a C-STORE-RSP.

What is decoded with pydicom: the C-GET-RQ identifier we send and the identifier of a
C-GET-RSP (the Failed SOP Instance UID List), both small. The command sets are ours
(`app.dicom.wire`). Every response is handed back as (status, identifier) datasets, the
shape pynetdicom's `send_c_get` yields, so `app.dicom.scu._responses` keeps all the status
logic (pending counts, final status, 0xB000, cancel).

Failures are `DicomFailure`s made by `app.dicom.errors.to_failure` from an
`AssociationOutcome`, in the same words as every other operation: the PACS silent past the
DIMSE timeout, an A-ABORT, a closed connection; a protocol error aborts the association. An
instance the association dies under is discarded (its partial file removed) and never
reported as received.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from app.dicom import wire
from app.dicom.ae import AEConfig, Node, get_plan
from app.dicom.errors import DicomFailure, to_failure
from app.dicom.scp import STATUS_INTERNAL, Incoming, Received, open_temp
from app.dicom.store_link import Link
from app.dicom.wire import ProtocolError, encode_command, us_value

log = logging.getLogger(__name__)

GET_MODEL = str(StudyRootQueryRetrieveInformationModelGet)
# The identifier of a C-GET-RSP carries at most the Failed SOP Instance UID List: a few
# thousand UIDs is a few hundred kB; anything much larger is not one.
LARGEST_IDENTIFIER = 8 * 1024 * 1024

# Encoded A-ASSOCIATE-RQs by what they say (GetLink._associate_rq).
_REQUESTS: dict[tuple[object, ...], bytes] = {}

OnStore = Callable[[Received], None]
CancelCheck = Callable[[], bool]


class Cancelled(Exception):
    """`should_cancel` said so between two sub-operations: the caller aborts the association."""


class GetLink(Link):
    """One association to `node` for a C-GET (Study Root): the Get model, and storage
    contexts on which we take the SCP role for the instances it sends (`get_plan`: a context
    per transfer syntax family, so an instance comes in the syntax it is stored in)."""

    def __init__(self, node: Node, sop_classes: Iterable[str], *, config: AEConfig) -> None:
        plan = get_plan(sop_classes)
        proposals: list[tuple[str, list[str]]] = [(GET_MODEL, [str(ExplicitVRLittleEndian),
                                                               str(ImplicitVRLittleEndian)])]
        proposals += [(uid, list(syntaxes)) for uid, syntaxes in plan]
        super().__init__(node, proposals, config=config, scp_roles=[uid for uid, _ in plan])
        self._spare: tuple[Path, BinaryIO] | None = None  # the next instance's file, made while waiting

    def _associate_rq(self) -> bytes:
        """The A-ASSOCIATE-RQ, kept per process: with 128 contexts of several syntaxes each,
        pynetdicom's PDU classes take 20-40 ms to build it, and a worker asks the same PACS
        for the same kinds of object again and again."""
        key = (self.config.ae_title, self.node.ae_title, self.config.max_pdu,
               tuple((cid, sop, tuple(syntaxes)) for cid, (sop, syntaxes) in self._proposed.items()),
               tuple(self._scp_roles))
        request = _REQUESTS.get(key)
        if request is None:
            request = super()._associate_rq()
            if len(_REQUESTS) >= 64:
                _REQUESTS.clear()
            _REQUESTS[key] = request
        return request

    def get(self, query: Dataset, *, storage_dir: Path, quarantine_dir: Path, on_store: OnStore | None = None,
            should_cancel: CancelCheck | None = None) -> Iterator[tuple[Dataset, Dataset | None]]:
        """Send a C-GET-RQ with `query`; yield (status, identifier) for each C-GET-RSP, the
        last one final. Meanwhile each C-STORE sub-operation is written into `storage_dir`
        (`<SOP Instance UID>.dcm`) or `quarantine_dir`, answered, and handed to
        `on_store(received)` (a failure there is logged, never sent to the PACS).

        Raises DicomFailure when the association fails (aborted here), Cancelled when
        `should_cancel()` says so after a sub-operation (the caller aborts)."""
        if self.wire is None:
            raise to_failure(self._outcome(closed_by_peer=True))
        context_id = next((cid for cid, (sop, _) in self.contexts.items() if sop == GET_MODEL), None)
        if context_id is None:
            self.abort()
            raise DicomFailure("no-presentation-context", "the node does not accept C-GET (Study Root "
                               "Query/Retrieve - GET not accepted): retrieve with C-MOVE instead", False)
        implicit = self.contexts[context_id][1] == ImplicitVRLittleEndian
        identifier = encode(query, implicit, True)
        if identifier is None:
            raise ValueError("the query cannot be encoded")
        message_id = self.next_message_id()
        command = self.request_command(GET_MODEL, wire.C_GET_RQ, message_id)
        with self.exchange("retrieval"):
            self.wire.send_message(context_id, command, identifier)
            while True:
                cid, fields = self.wire.read_command()
                if fields.field == wire.C_STORE_RQ:
                    self._store(cid, fields, storage_dir, quarantine_dir, on_store)
                    if should_cancel is not None and should_cancel():
                        raise Cancelled()
                    continue
                if fields.field != wire.C_GET_RSP:
                    raise ProtocolError(f"command 0x{fields.field or 0:04X} during a C-GET")
                if cid != context_id or fields.us(wire.RESPONDED_TO) != message_id:
                    raise ProtocolError("a C-GET response to another request")
                status = _status(fields)
                found = self._identifier(cid, implicit) if fields.has_data_set else None
                final = "Status" not in status or status.Status not in (0xFF00, 0xFF01)
                if final:
                    self._drop_spare()
                yield status, found
                if final:
                    return

    def _store(self, context_id: int, fields: wire.Command, storage_dir: Path, quarantine_dir: Path,
               on_store: OnStore | None) -> None:
        """One C-STORE sub-operation: its data set to a file as it arrives, the checks, the
        response. A partial file is removed if the association ends under it."""
        assert self.wire is not None  # noqa: S101 - narrows the type; get() checked it
        kind = self.contexts.get(context_id)
        if kind is None:
            raise ProtocolError(f"a C-STORE on presentation context {context_id}, which we did not accept")
        if not fields.has_data_set:
            raise ProtocolError("a C-STORE request without a data set")
        request_class = fields.text(wire.AFFECTED_SOP_CLASS)
        request_sop = fields.text(wire.AFFECTED_SOP_INSTANCE)
        details: dict[str, object] = {
            "calling_ae": self.node.ae_title,
            "peer": f"{self.node.host}:{self.node.port}",
            "affected_sop_class_uid": request_class,
            "affected_sop_instance_uid": request_sop,
            "received_at": datetime.now(UTC).isoformat(),
        }
        spare, self._spare = self._spare, None
        incoming = Incoming(storage_dir, sop_class=request_class, sop_uid=request_sop, syntax=kind[1],
                            details=details, spare=spare)
        try:
            self.wire.read_data_set(context_id, incoming.write)
        except BaseException:
            incoming.discard()
            raise
        received = incoming.finish(storage_dir=storage_dir, quarantine_dir=quarantine_dir, study_folders=False)
        if on_store is not None:
            try:
                on_store(received)
            except Exception:  # noqa: BLE001 - the instance is settled; only the caller's note is lost
                log.exception("on_store failed for a retrieved instance")
        self.wire.send_message(context_id, _store_response(fields, received))
        # While the PACS answers and reads its next instance, the file for that one is made.
        try:
            self._spare = open_temp(storage_dir)
        except OSError:
            self._spare = None  # Incoming tries again, and answers 0xA700 if it cannot

    def _drop_spare(self) -> None:
        """Remove the file made for an instance that will not come. Never raises."""
        if self._spare is not None:
            temp, out = self._spare
            self._spare = None
            with contextlib.suppress(OSError):
                out.close()
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)

    def _close(self) -> None:
        self._drop_spare()
        super()._close()

    def _identifier(self, context_id: int, implicit: bool) -> Dataset | None:
        """A C-GET-RSP's identifier (small), decoded; None if it does not decode (the status
        still stands: the caller then says the PACS did not name the failed instances)."""
        data = self.read_small(context_id, LARGEST_IDENTIFIER, "a C-GET response identifier")
        try:
            return decode(io.BytesIO(data), implicit, True)
        except Exception:  # noqa: BLE001 - bytes from outside
            log.warning("a C-GET response identifier that does not decode; ignored")
            return None


def _status(fields: wire.Command) -> Dataset:
    """The parts of a C-GET-RSP command set `_responses` reads, as pynetdicom gives them.
    Elements are added ready-made: setting keywords one by one cost a tenth of a millisecond
    a response, and Orthanc sends one per instance."""
    status = Dataset()
    for element in (wire.STATUS, wire.REMAINING, wire.COMPLETED, wire.FAILED, wire.WARNING):
        value = fields.us(element)
        if value is not None:
            status.add(DataElement(element, "US", value, validation_mode=config.IGNORE))
    comment = fields.text(wire.ERROR_COMMENT)
    if comment:
        status.ErrorComment = comment
    return status


def _store_response(request: wire.Command, received: Received) -> bytes:
    """The C-STORE-RSP for a sub-operation (PS3.7 9.3.1.2), the request's UIDs echoed as sent."""
    elements: list[tuple[int, bytes]] = []
    if wire.AFFECTED_SOP_CLASS in request:
        elements.append((wire.AFFECTED_SOP_CLASS, request[wire.AFFECTED_SOP_CLASS]))
    elements += [
        (wire.COMMAND_FIELD, us_value(wire.C_STORE_RSP)),
        (wire.RESPONDED_TO, us_value(request.us(wire.MESSAGE_ID) or 0)),
        (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET)),
        (wire.STATUS, us_value(received.status if 0 <= received.status <= 0xFFFF else STATUS_INTERNAL)),
    ]
    if received.reason:
        # (0000,0902) Error Comment, LO: at most 64 characters (PS3.7 C.4.1.1.3).
        elements.append((wire.ERROR_COMMENT, wire.text_value(received.reason.encode("ascii", "replace")
                                                             .decode()[:64])))
    if wire.AFFECTED_SOP_INSTANCE in request:
        elements.append((wire.AFFECTED_SOP_INSTANCE, request[wire.AFFECTED_SOP_INSTANCE]))
    return encode_command(elements)
