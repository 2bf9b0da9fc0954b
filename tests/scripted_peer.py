"""A DICOM peer at the PDU level, for what Orthanc and a pynetdicom peer cannot be made to do
on cue (go silent, abort or close part-way, send what does not decode or on a context we never
accepted): the association is accepted with pynetdicom's PDU classes, then a test's script
speaks over a `Wire`. Subclasses say what follows the acceptance (`serve`)."""

from __future__ import annotations

import socket
import threading

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from app.dicom.ae import Node
from app.dicom.wire import Wire

PROVIDER_REJECTED_SYNTAXES = 0x04  # transfer syntaxes not supported (a provider rejection)


class PduPeer:
    """A listener on 127.0.0.1 whose connections `serve()` handles on a thread of its own;
    what the thread raises is kept in `error` for the test (never lost in the thread)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.node = Node("SCRIPTED", "127.0.0.1", self.listener.getsockname()[1])
        self.error: BaseException | None = None
        self.wire: Wire | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self.serve()
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc

    def serve(self) -> None:
        raise NotImplementedError

    def next_association(self) -> A_ASSOCIATE:
        """Take the next connection and read its A-ASSOCIATE-RQ."""
        sock, _ = self.listener.accept()
        sock.settimeout(10)
        self.wire = Wire(sock, fragment=16 * 1024 - 6)
        _, pdu = self.wire.read_pdu()
        request = A_ASSOCIATE_RQ()
        request.decode(pdu)
        return request.to_primitive()

    def accept(self, asked: A_ASSOCIATE, *, refuse_last: bool = False) -> dict[int, tuple[str, str]]:
        """A-ASSOCIATE-AC: every proposed context in its first syntax (the last one refused
        if asked); returns the accepted ones, id -> (SOP class, syntax)."""
        assert self.wire is not None
        answer = A_ASSOCIATE()
        answer.application_context_name = asked.application_context_name
        answer.calling_ae_title = asked.calling_ae_title
        answer.called_ae_title = asked.called_ae_title
        answer.result = 0
        results, accepted = [], {}
        proposals = asked.presentation_context_definition_list
        for proposed in proposals:
            context = PresentationContext()
            context.context_id = proposed.context_id
            context.abstract_syntax = proposed.abstract_syntax
            context.transfer_syntax = [proposed.transfer_syntax[0]]
            context.result = 0
            if refuse_last and proposed is proposals[-1]:
                context.result = PROVIDER_REJECTED_SYNTAXES
            else:
                accepted[int(proposed.context_id)] = (str(proposed.abstract_syntax), str(proposed.transfer_syntax[0]))
            results.append(context)
        answer.presentation_context_definition_results_list = results
        most = MaximumLengthNotification()
        most.maximum_length_received = 16384
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = UID("1.2.826.0.1.3680043.9.9999.1")
        answer.user_information = [most, implementation]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(answer)
        self.wire.sock.sendall(pdu.encode())
        return accepted
