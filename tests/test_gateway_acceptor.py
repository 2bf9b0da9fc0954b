"""The gateway's own association handling (app/dicom/acceptor.py), against real senders.

What a sender notices: several senders are served at once; an association that goes
idle, or stops half-way through a data set, is aborted after its time-out and leaves no
half-written instance behind; an abort mid-instance leaves nothing either and tells the
desk the sender did not finish; contexts the gateway cannot take are refused one by one;
one association too many is refused as transient ("try again"), not dropped. Senders are
DCMTK's storescu, pynetdicom's AE (a third party to our acceptor), and raw sockets where a
sender has to misbehave in a way no well-made tool will.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from app.dicom.ae import AEConfig, Node, Timeouts
from app.dicom.scp import GatewaySCP, InstanceMeta
from app.dicom.store_link import read_part10, store_command
from app.dicom.synth import make_study
from app.dicom.wire import STATUS, parse_command
from tests.dicom_peers import peer_env, require_binary, run_storescu

pytestmark = pytest.mark.timeout(120)

AET = "IEPGATEWAY"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


class Gateway:
    """A GatewaySCP with short time-outs, recording what it tells the desk."""

    def __init__(self, root: Path, *, network: float = 30, dimse: float = 10, max_associations: int = 10) -> None:
        self.stored: list[InstanceMeta] = []
        self.done: list[tuple[set[str], bool]] = []
        config = AEConfig(ae_title=AET, timeouts=Timeouts(connection=2, acse=5, dimse=dimse, network=network))
        self.scp = GatewaySCP(AET, 0, root / "inbox", root / "quarantine", config=config,
                              on_stored=lambda path, meta: self.stored.append(meta),
                              on_sender_done=lambda studies, released: self.done.append((studies, released)),
                              max_associations=max_associations)
        self.scp.start()
        self.node = Node(AET, "127.0.0.1", self.scp.port)

    def files(self) -> list[Path]:
        return sorted(self.scp.storage_dir.glob("*/*.dcm"))

    def partials(self) -> list[Path]:
        return sorted((self.scp.storage_dir / ".incoming").glob("*"))

    def wait_for(self, condition, seconds: float = 10) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return condition()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator:
    made: list[Gateway] = []

    def make(**kwargs) -> Gateway:
        gateway = Gateway(tmp_path / f"gw{len(made)}", **kwargs)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.scp.stop()


def ct_study(folder: Path, n: int, patient_id: str = "ACC-1") -> list[Path]:
    return make_study(folder, patient_id=patient_id, patient_name="SENDER^ONE", birth_date="19500101",
                      study_date="20240301", n_series=1, n_per_series=n, rows=128, cols=128)


# -- a sender written by hand, for the misbehaviour no real tool shows ----------------------------


class RawSender:
    """Speaks just enough DICOM over a socket to misbehave on purpose."""

    def __init__(self, node: Node, contexts: list[tuple[str, list[str]]], *, calling: str = "RAWSCU") -> None:
        self.sock = socket.create_connection((node.host, node.port), timeout=15)
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID("1.2.840.10008.3.1.1.1")
        primitive.calling_ae_title = calling
        primitive.called_ae_title = node.ae_title
        proposed = []
        for i, (sop, syntaxes) in enumerate(contexts):
            context = PresentationContext()
            context.context_id = 2 * i + 1
            context.abstract_syntax = UID(sop)
            context.transfer_syntax = [UID(ts) for ts in syntaxes]
            proposed.append(context)
        primitive.presentation_context_definition_list = proposed
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = 16384
        primitive.user_information = [max_length]
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        self.sock.sendall(request.encode())
        self.kind, self.answer = self.read_pdu()

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._exact(6)
        kind, length = struct.unpack(">BxI", header)
        return kind, header + self._exact(length)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def results(self) -> dict[int, tuple[int, str]]:
        """Accepted or not, per context id: (result, transfer syntax)."""
        accept = A_ASSOCIATE_AC()
        accept.decode(self.answer)
        return {int(cx.context_id): (int(cx.result), str(cx.transfer_syntax[0]))
                for cx in accept.to_primitive().presentation_context_definition_results_list}

    def pdv(self, context_id: int, data: bytes, control: int) -> None:
        self.sock.sendall(struct.pack(">BxIIBB", 4, len(data) + 6, len(data) + 2, context_id, control) + data)

    def closed_or_aborted(self, within: float) -> str:
        """What the gateway did next: 'abort' (A-ABORT then close), 'closed', or 'open'."""
        self.sock.settimeout(within)
        try:
            kind, _ = self.read_pdu()
        except TimeoutError:
            return "open"
        except (ConnectionError, OSError):
            return "closed"
        return "abort" if kind == 7 else f"pdu {kind}"

    def close(self) -> None:
        self.sock.close()


def half_an_instance(sender: RawSender, path: Path) -> None:
    """The C-STORE-RQ and the first part of the data set, never the rest."""
    part = read_part10(path)
    data = path.read_bytes()[part.data_offset:]
    sender.pdv(1, store_command(part.sop_class, part.sop_uid, 1, 0), 0x03)
    sender.pdv(1, data[:8000], 0x00)


# -- the tests ------------------------------------------------------------------------------------------


def test_several_senders_are_served_at_once(worker_gateway: Node, tmp_path: Path) -> None:
    """worker.py's gateway: a sender that holds its association open without sending must
    not keep others out. Four storescu pushes finish while it sits there, and the desk
    counts each of their studies whole, with its sender finished."""
    from app.extensions import db
    from app.transfers.models import InboundStudy

    idle = RawSender(worker_gateway, [(CT, [EXPLICIT])])
    assert idle.kind == 2  # accepted, and now it just sits on the association
    studies = [ct_study(tmp_path / f"s{i}", 5, patient_id=f"PAR-{i}") for i in range(4)]
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda p=paths: results.append(run_storescu(worker_gateway, p)))
               for paths in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]

    def arrived() -> list[tuple[str, int, bool]]:
        db.session.expire_all()
        return sorted((s.patient_id, s.instances, s.sender_done_at is not None)
                      for s in db.session.scalars(sa.select(InboundStudy)))

    deadline = time.monotonic() + 15
    while arrived() != [(f"PAR-{i}", 5, True) for i in range(4)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert arrived() == [(f"PAR-{i}", 5, True) for i in range(4)]
    assert idle.closed_or_aborted(0.2) == "open"  # still served, untouched by the others
    idle.close()


def test_an_idle_association_is_aborted_after_the_network_timeout(make_gateway) -> None:
    gateway = make_gateway(network=1.0)
    sender = RawSender(gateway.node, [(CT, [EXPLICIT])])
    started = time.monotonic()
    assert sender.closed_or_aborted(10) == "abort"
    assert 0.8 < time.monotonic() - started < 5


def test_a_sender_that_stops_mid_instance_is_aborted_and_nothing_half_written_stays(
        make_gateway, tmp_path: Path) -> None:
    gateway = make_gateway(dimse=1.0)
    (path,) = ct_study(tmp_path / "src", 1)
    sender = RawSender(gateway.node, [(CT, [EXPLICIT])])
    half_an_instance(sender, path)
    assert gateway.wait_for(lambda: len(gateway.partials()) == 1, 5)  # it was being written as it came
    started = time.monotonic()
    assert sender.closed_or_aborted(10) == "abort"
    assert 0.8 < time.monotonic() - started < 5
    assert gateway.wait_for(lambda: not gateway.partials(), 5)
    assert gateway.files() == [] and gateway.stored == []


def test_an_abort_mid_instance_keeps_nothing_of_it_and_the_desk_hears_the_sender_did_not_finish(
        make_gateway, tmp_path: Path) -> None:
    gateway = make_gateway()
    first, second = ct_study(tmp_path / "src", 2)
    sender = RawSender(gateway.node, [(CT, [EXPLICIT])])
    part = read_part10(first)
    sender.pdv(1, store_command(part.sop_class, part.sop_uid, 1, 0), 0x03)
    sender.pdv(1, first.read_bytes()[part.data_offset:], 0x02)
    kind, response = sender.read_pdu()
    assert kind == 4 and parse_command(response[12:]).us(STATUS) == 0  # after the PDU and PDV headers
    half_an_instance(sender, second)
    sender.sock.sendall(struct.pack(">BxI", 7, 4) + bytes(4))  # A-ABORT
    sender.close()
    assert gateway.wait_for(lambda: gateway.done != [], 5)
    assert gateway.done == [({gateway.stored[0].study_uid}, False)]  # aborted, not released
    assert [p.name for p in gateway.files()] == [f"{part.sop_uid}.dcm"]
    assert gateway.partials() == []


def test_contexts_are_accepted_one_by_one_in_the_senders_preferred_syntax(make_gateway) -> None:
    gateway = make_gateway()
    jpeg_2000, implicit = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"
    sender = RawSender(gateway.node, [
        (CT, [jpeg_2000, EXPLICIT]),  # the sender's first choice stands: no transcoding
        (CT, [implicit, EXPLICIT]),
        ("1.2.840.10008.5.1.4.1.2.2.1", [EXPLICIT]),  # Study Root C-FIND: not a gateway service
        (CT, ["1.2.999.1"]),  # a transfer syntax nobody knows
        ("1.2.840.10008.1.1", [EXPLICIT]),  # Verification
    ])
    assert sender.kind == 2
    assert sender.results() == {1: (0, jpeg_2000), 3: (0, implicit), 5: (3, EXPLICIT), 7: (4, "1.2.999.1"),
                                9: (0, EXPLICIT)}
    sender.close()


def test_a_message_on_a_refused_context_aborts_the_association(make_gateway, tmp_path: Path) -> None:
    gateway = make_gateway()
    (path,) = ct_study(tmp_path / "src", 1)
    sender = RawSender(gateway.node, [(CT, [EXPLICIT]), ("1.2.840.10008.5.1.4.1.2.2.1", [EXPLICIT])])
    part = read_part10(path)
    sender.pdv(3, store_command(part.sop_class, part.sop_uid, 1, 0), 0x03)
    assert sender.closed_or_aborted(5) == "abort"
    assert gateway.files() == []


def test_one_association_too_many_is_refused_as_transient(make_gateway) -> None:
    gateway = make_gateway(max_associations=2)
    holding = [RawSender(gateway.node, [(CT, [EXPLICIT])]) for _ in range(2)]
    assert [s.kind for s in holding] == [2, 2]
    extra = RawSender(gateway.node, [(CT, [EXPLICIT])])
    assert extra.kind == 3  # A-ASSOCIATE-RJ
    reject = A_ASSOCIATE_RJ()
    reject.decode(extra.answer)
    assert (reject.result, reject.source, reject.reason_diagnostic) == (2, 3, 2)  # transient, local limit
    for sender in holding:
        sender.close()
    later = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # once the others are gone, the sender gets in
        later = RawSender(gateway.node, [(CT, [EXPLICIT])])
        if later.kind == 2:
            break
        later.close()
        time.sleep(0.1)
    assert later is not None and later.kind == 2


def test_echo_and_a_release_from_a_pynetdicom_sender(make_gateway, tmp_path: Path) -> None:
    """pynetdicom as a third-party sender: C-ECHO, a C-STORE, a release; the desk hears
    the association ended by a release."""
    gateway = make_gateway()
    (path,) = ct_study(tmp_path / "src", 1)
    ae = AE(ae_title="PYNETSCU")
    assoc = ae.associate("127.0.0.1", gateway.scp.port, ae_title=AET,
                         contexts=[build_context("1.2.840.10008.1.1"), build_context(CT, [EXPLICIT])])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    assert gateway.wait_for(lambda: gateway.done != [], 5)
    assert gateway.done == [({gateway.stored[0].study_uid}, True)]
    assert gateway.stored[0].calling_ae == "PYNETSCU"


def test_storescu_with_a_big_pdu_and_echoscu(make_gateway, tmp_path: Path) -> None:
    """DCMTK with the largest PDU it offers, and its echoscu."""
    gateway = make_gateway()
    paths = ct_study(tmp_path / "src", 3)
    binary = require_binary("storescu", "dcmtk")
    done = subprocess.run([binary, "--aetitle", "BIGPDU", "--call", AET, "--max-pdu", "131072",
                           "--max-send-pdu", "131072", "127.0.0.1", str(gateway.scp.port), *map(str, paths)],
                          env=peer_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(gateway.files()) == 3
    for path in paths:
        part = read_part10(path)
        stored = gateway.scp.storage_dir / gateway.stored[0].study_uid / f"{part.sop_uid}.dcm"
        assert stored.read_bytes()[read_part10(stored).data_offset:] == path.read_bytes()[part.data_offset:]
    echo = subprocess.run([require_binary("echoscu", "dcmtk"), "--call", AET, "127.0.0.1", str(gateway.scp.port)],
                          env=peer_env(), capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
