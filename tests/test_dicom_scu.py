"""The SCU side against real peers (Orthanc, DCMTK storescp) and misbehaving pynetdicom SCPs.

Each failure test checks the words the analyst will read and whether a retry can help.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from app.dicom import scu
from app.dicom.ae import AEConfig, Node, Timeouts, open_association, verification_contexts
from app.dicom.errors import AssociationOutcome, DicomFailure, to_failure
from app.dicom.scp import GatewaySCP
from app.dicom.synth import make_instance, make_study
from tests.dicom_peers import OUR_AE, QUICK, OrthancPeer, free_port, rss_kb

pytestmark = pytest.mark.timeout(120)


def study(folder: Path, patient_id: str, **kwargs) -> list[Path]:
    options = dict(patient_name="TEST^PATIENT", birth_date="19700101", study_date="20240315",
                   n_series=1, n_per_series=3)
    options.update(kwargs)
    return make_study(folder, patient_id=patient_id, **options)


# -- echo and find against Orthanc ---------------------------------------------------------------


def test_echo_orthanc_returns_round_trip_ms(orthanc: OrthancPeer) -> None:
    ms = scu.echo(orthanc.node, config=QUICK)
    assert 0 < ms < 2000


def test_send_three_series_then_find_instances_confirms_every_uid(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-SEND-1", n_series=3, n_per_series=4)
    progress: list[tuple[int, int]] = []
    result = scu.send_files(orthanc.node, paths, config=QUICK,
                            on_progress=lambda done, size: progress.append((done, size)))
    assert result.ok, result.failed
    assert (result.sent, result.associations) == (12, 1)
    assert progress[-1] == (12, sum(p.stat().st_size for p in paths))
    sent = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    study_uid = dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    found = scu.find_instances(orthanc.node, study_uid, config=QUICK)
    assert {sop for _, sop in found} == sent
    assert len({series for series, _ in found}) == 3
    assert orthanc.sop_uids(study_uid) == sent  # and Orthanc's own REST view agrees


def test_find_studies_by_patient_id_dates_modality_and_description(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path / "a", "SCU-FIND-1", accession="ACC-FIND-1", modality="MR",
                  description="MRI KNEE LEFT", study_date="20230704")
    study(tmp_path / "b", "SCU-FIND-OTHER")
    assert scu.send_files(orthanc.node, paths, config=QUICK).ok
    want = dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    found = scu.find_studies(orthanc.node, patient_id="SCU-FIND-1", config=QUICK)
    assert [s.study_uid for s in found] == [want]
    summary = found[0]
    assert summary.study_date == "20230704"
    assert summary.description == "MRI KNEE LEFT"
    assert summary.modalities == ("MR",)
    assert summary.n_instances == 3
    assert summary.accession == "ACC-FIND-1"
    assert summary.patient_name == "TEST^PATIENT"

    narrowed = scu.find_studies(orthanc.node, patient_id="SCU-FIND-1", date_from="20230701",
                                date_to="20230731", modality="MR", description="KNEE", config=QUICK)
    assert [s.study_uid for s in narrowed] == [want]
    assert scu.find_studies(orthanc.node, patient_id="SCU-FIND-1", date_from="20240101", config=QUICK) == []
    # An NHS number is searched as a Patient ID too (most PACS index nothing else).
    assert [s.study_uid for s in scu.find_studies(orthanc.node, nhs_number="SCU-FIND-1", config=QUICK)] == [want]
    # Wildcards typed by a user are not wildcards.
    assert scu.find_studies(orthanc.node, patient_id="SCU-FIND-*", config=QUICK) == []


def test_find_studies_refuses_an_empty_query(orthanc: OrthancPeer) -> None:
    with pytest.raises(ValueError, match="at least one"):
        scu.find_studies(orthanc.node, patient_id="  ", config=QUICK)


# -- retrieve --------------------------------------------------------------------------------------


def _stored_study(orthanc: OrthancPeer, folder: Path, patient_id: str) -> tuple[str, set[str]]:
    paths = study(folder, patient_id, n_series=2, n_per_series=3)
    assert scu.send_files(orthanc.node, paths, config=QUICK).ok
    first = dcmread(paths[0], stop_before_pixels=True)
    return first.StudyInstanceUID, {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}


def test_retrieve_with_c_get_streams_each_instance_to_a_file(orthanc: OrthancPeer, tmp_path: Path) -> None:
    study_uid, sent = _stored_study(orthanc, tmp_path / "src", "SCU-GET-1")
    progress: list[int] = []
    result = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "got", method="get", config=QUICK,
                                on_progress=lambda n, size: progress.append(n))
    assert result.ok and result.completed == 6 and result.failed == 0
    assert {p.stem for p in result.files} == sent
    assert progress == [1, 2, 3, 4, 5, 6]
    for path in result.files:
        assert path.parent == tmp_path / "got"
        assert dcmread(path).SOPInstanceUID == path.stem


def test_retrieve_with_c_move_into_our_gateway_scp(orthanc: OrthancPeer, tmp_path: Path, gateway_port: int) -> None:
    study_uid, sent = _stored_study(orthanc, tmp_path / "src", "SCU-MOVE-1")
    stored: list[str] = []
    with GatewaySCP(OUR_AE, gateway_port, tmp_path / "inbox", tmp_path / "quarantine",
                    on_stored=lambda path, meta: stored.append(meta.sop_uid)) as gateway:
        result = scu.retrieve_study(orthanc.node, study_uid, gateway.study_dir(study_uid), method="move",
                                    our_node=Node(OUR_AE, "127.0.0.1", gateway_port), config=QUICK)
    assert result.ok and result.completed == 6
    assert {p.stem for p in result.files} == sent == set(stored)


def test_c_move_to_a_destination_orthanc_does_not_know_fails_plainly(orthanc: OrthancPeer, tmp_path: Path) -> None:
    study_uid, _ = _stored_study(orthanc, tmp_path / "src", "SCU-MOVE-2")
    with pytest.raises(DicomFailure) as caught:
        scu.retrieve_study(orthanc.node, study_uid, None, method="move",
                           our_node=Node("NOBODY", "127.0.0.1", 9), config=QUICK)
    # Orthanc 1.10 answers 0xC000 here, not 0xA801 (which the fake SCP below sends); either
    # way the analyst reads what to do about it.
    assert caught.value.status in (0xC000, 0xA801)
    assert "move destination" in caught.value.plain and "add" in caught.value.plain
    assert not caught.value.retryable


def test_c_move_destination_unknown_0xA801_says_what_to_do(fake_scp, tmp_path: Path) -> None:
    def handle_move(event):
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown

    node = fake_scp([(evt.EVT_C_MOVE, handle_move)], qr=True)
    with pytest.raises(DicomFailure) as caught:
        scu.retrieve_study(node, "1.2.3", None, method="move", our_node=Node(OUR_AE, "127.0.0.1", 9),
                           config=QUICK)
    assert caught.value.plain.startswith(
        "the move destination is unknown to the PACS (0xA801): add our AE title to the PACS's list of destinations"
    )
    assert caught.value.code == "status-0xA801" and not caught.value.retryable


def test_c_get_with_some_failed_suboperations_returns_0xB000_and_the_failed_uids(fake_scp, tmp_path: Path) -> None:
    common = dict(patient_name="A^B", birth_date="19700101", study_uid="1.2.3.4",
                  study_date="20240101", accession="X")
    good = make_instance(patient_id="P1", series_uid="1.2.3.4.1", **common)
    bad = make_instance(patient_id="P1", series_uid="1.2.3.4.1", instance_number=2, **common)
    del bad.PatientID  # our C-STORE handler refuses it (0xC221): a failed sub-operation

    def handle_get(event):
        yield 2
        yield 0xFF00, good
        yield 0xFF00, bad

    node = fake_scp([(evt.EVT_C_GET, handle_get)], qr=True)
    result = scu.retrieve_study(node, "1.2.3.4", tmp_path / "got", method="get", config=QUICK)
    assert result.status == 0xB000 and not result.ok
    assert (result.completed, result.failed) == (1, 1)
    assert result.failed_uids == [bad.SOPInstanceUID]
    assert [p.stem for p in result.files] == [good.SOPInstanceUID]
    reasons = list((tmp_path / "got" / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 1 and "missing Patient ID" in reasons[0].read_text()


def test_an_empty_status_from_a_retrieve_is_a_failure_not_success() -> None:
    failure = to_failure(Dataset(), operation="get")
    assert failure.code == "no-status" and failure.retryable


# -- association failures in plain words ---------------------------------------------------------


def test_wrong_called_ae_title_is_rejected_in_plain_words_not_retryable(orthanc: OrthancPeer) -> None:
    wrong = Node("NOTORTHANC", "127.0.0.1", orthanc.node.port)
    with pytest.raises(DicomFailure) as caught:
        scu.echo(wrong, config=QUICK)
    assert "association rejected: called AE title not recognised" in caught.value.plain
    assert "check the node's AE title in the node register" in caught.value.plain
    assert caught.value.code == "rejected-called-aet" and not caught.value.retryable


def test_a_node_that_does_not_know_our_ae_title_says_so(fake_scp) -> None:
    node = fake_scp([], require_calling=["SOMEONEELSE"])
    with pytest.raises(DicomFailure) as caught:
        scu.echo(node, config=QUICK)
    assert caught.value.plain.startswith("the remote node does not know our AE title")
    assert OUR_AE in caught.value.plain
    assert not caught.value.retryable


def test_a_closed_port_is_connection_refused_and_retryable() -> None:
    node = Node("ANY", "127.0.0.1", free_port())
    started = time.monotonic()
    with pytest.raises(DicomFailure) as caught:
        scu.echo(node, config=QUICK)
    assert caught.value.plain.startswith(f"connection refused: nothing listens on 127.0.0.1:{node.port}")
    assert caught.value.code == "connection-refused" and caught.value.retryable
    assert time.monotonic() - started < 2


def test_remote_out_of_resources_0xA702_is_plain_and_retryable(fake_scp, tmp_path: Path) -> None:
    node = fake_scp([(evt.EVT_C_STORE, lambda event: 0xA702)])
    paths = study(tmp_path, "SCU-A702", n_per_series=2)
    result = scu.send_files(node, paths, config=QUICK)
    assert len(result.failed) == 2 and result.sent == 0
    failure = result.failed[0]
    assert failure.plain.startswith("remote out of resources (0xA702)")
    assert failure.code == "status-0xA702" and failure.retryable


def test_a_silent_node_times_out_within_the_dimse_timeout(fake_scp) -> None:
    release = threading.Event()

    def never_answer(event):
        release.wait(10)  # a stuck peer; released at the end so the server can stop
        return 0x0000

    node = fake_scp([(evt.EVT_C_ECHO, never_answer)])
    config = AEConfig(timeouts=Timeouts(connection=2, acse=5, dimse=1, network=30))
    started = time.monotonic()
    try:
        with pytest.raises(DicomFailure) as caught:
            scu.echo(node, config=config)
    finally:
        release.set()
    assert caught.value.code == "timeout" and caught.value.retryable
    assert "did not answer within 1 seconds" in caught.value.plain
    assert 1.0 <= time.monotonic() - started < 4


# -- sending: partial failures, dropped associations, cancel, bad files ------------------------


def test_partial_failures_name_the_instances_and_the_rest_arrive(fake_scp, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-PARTIAL", n_per_series=6)
    refuse = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths[1::2]}
    stored: list[str] = []

    def handle(event):
        uid = event.request.AffectedSOPInstanceUID
        if uid in refuse:
            return 0xA700
        stored.append(uid)
        return 0x0000

    node = fake_scp([(evt.EVT_C_STORE, handle)])
    result = scu.send_files(node, paths, config=QUICK)
    assert set(result.failed_uids) == refuse
    assert result.sent == 3 and len(stored) == 3 and not result.ok


def test_a_dropped_association_is_re_established_and_the_send_goes_on(fake_scp, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-DROP", n_per_series=8)
    stored: list[str] = []
    dropped = threading.Event()

    def handle(event):
        if len(stored) == 4 and not dropped.is_set():
            dropped.set()
            # The peer drops the connection while instance 5 is in flight (from another
            # thread: a handler must not abort its own association, pynetdicom#912).
            threading.Thread(target=event.assoc.abort).start()
            time.sleep(0.5)
            return 0xA700
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    node = fake_scp([(evt.EVT_C_STORE, handle)])
    result = scu.send_files(node, paths, config=QUICK, reassociate_delay=0.05)
    assert result.ok, result.failed
    assert result.sent == 8 and result.associations == 2
    assert len(set(stored)) == 8


def test_send_gives_up_after_bounded_reassociations(fake_scp, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-DROP-ALWAYS", n_per_series=3)

    def handle(event):
        threading.Thread(target=event.assoc.abort).start()
        time.sleep(0.3)
        return 0xA700

    node = fake_scp([(evt.EVT_C_STORE, handle)])
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(node, paths, config=QUICK, max_reassociations=2, reassociate_delay=0.01)
    # An A-ABORT, or the connection closing before we read it: either way, in plain words.
    assert caught.value.code in ("aborted", "connection-closed") and caught.value.retryable
    assert caught.value.partial.associations == 3 and caught.value.partial.sent == 0  # type: ignore[attr-defined]


def test_unreadable_files_are_reported_and_the_others_sent(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-BADFILE", n_per_series=2)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    progress: list[tuple[int, int]] = []
    result = scu.send_files(orthanc.node, [paths[0], junk, paths[1]], config=QUICK,
                            on_progress=lambda done, sent: progress.append((done, sent)))
    assert result.sent == 2
    assert [(f.path, f.code) for f in result.failed] == [(junk, "unreadable-file")]
    assert "no DICM prefix" in result.failed[0].plain
    # Progress counts positions in the list, the unreadable file in its place: the engine
    # marks the first `done` instances sent, so a count ahead of the sends would mark one
    # that never left.
    first, second = (p.stat().st_size for p in paths)
    assert progress == [(1, first), (2, first), (3, first + second)]


def test_cancel_stops_between_instances(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-CANCEL", n_per_series=6)
    done: list[int] = []
    result = scu.send_files(orthanc.node, paths, config=QUICK, on_progress=lambda n, b: done.append(n),
                            should_cancel=lambda: len(done) >= 2)
    assert result.cancelled and result.sent == 2 and not result.ok


def test_a_send_to_a_closed_port_raises_connection_refused(tmp_path: Path) -> None:
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(Node("ANY", "127.0.0.1", free_port()), study(tmp_path, "X"), config=QUICK)
    assert caught.value.code == "connection-refused"


# -- memory and speed ----------------------------------------------------------------------------


def test_sending_200_files_keeps_memory_flat(storescp, tmp_path: Path) -> None:
    paths = study(tmp_path, "SCU-MEM", n_series=2, n_per_series=100)
    scu.send_files(storescp.node, paths[:10], config=QUICK)  # warm up imports and buffers
    before = rss_kb()
    result = scu.send_files(storescp.node, paths, config=QUICK)
    growth_mb = (rss_kb() - before) / 1024
    assert result.ok and result.sent == 200
    assert len(storescp.files()) >= 200
    # 200 x 128 KB = 25 MB of data; streaming from disk keeps the process near flat.
    assert growth_mb < 15, f"RSS grew {growth_mb:.1f} MB"


def test_tcp_nodelay_is_set_on_our_sockets_both_ways(tmp_path: Path) -> None:
    with GatewaySCP(OUR_AE, 0, tmp_path / "inbox", tmp_path / "quarantine") as gateway:
        node = Node(OUR_AE, "127.0.0.1", gateway.port)
        for wanted in (True, False):
            config = AEConfig(timeouts=QUICK.timeouts, tcp_nodelay=wanted)
            with open_association(node, verification_contexts(), config=config) as (assoc, _):
                ours = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert bool(ours) is wanted
                assert gateway._server is not None
                (theirs,) = gateway._server.live_sockets()
                assert theirs.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_tcp_nodelay_speeds_up_small_instances_on_loopback(orthanc: OrthancPeer, tmp_path: Path,
                                                           record_property) -> None:
    """Without TCP_NODELAY small DIMSE messages wait on delayed ACKs (PITFALLS). Measured
    here (128 KB instances to Orthanc): ~190/s with it, ~70/s without. The assertion is
    only "not slower", so a loaded CI machine cannot make it flaky."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for run, nodelay in enumerate((True, False) * 3):
        paths = study(tmp_path / str(run), f"SCU-NODELAY-{run}", n_per_series=30)
        started = time.monotonic()
        result = scu.send_files(orthanc.node, paths, config=AEConfig(timeouts=QUICK.timeouts,
                                                                      tcp_nodelay=nodelay))
        assert result.ok
        rates[nodelay].append(result.sent / (time.monotonic() - started))
    with_nodelay, without = statistics.median(rates[True]), statistics.median(rates[False])
    record_property("instances_per_s_nodelay", round(with_nodelay))
    record_property("instances_per_s_default", round(without))
    print(f"\nloopback to Orthanc, 128 KB instances: {with_nodelay:.0f}/s with TCP_NODELAY, "
          f"{without:.0f}/s without")
    assert with_nodelay > without


# -- the mapping itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "operation", "code", "words", "retryable"),
    [
        (0xA700, "store", "status-0xA700", "remote out of resources (0xA700)", True),
        (0xA702, "move", "status-0xA702", "remote out of resources (0xA702)", True),
        (0xA801, "move", "status-0xA801", "the move destination is unknown to the PACS (0xA801)", False),
        (0xA900, "store", "status-0xA900", "does not match its SOP class (0xA900)", False),
        (0xC000, "store", "status-0xC000", "could not understand the data set (0xC000)", False),
        (0x0122, "store", "status-0x0122", "SOP class not supported, 0x0122", False),
        (0xB000, "get", "status-0xB000", "some instances failed to transfer (0xB000)", True),
        (None, "store", "no-status", "the node sent no status", True),
        (AssociationOutcome(connected=True, rejected=(1, 1, 7)), "", "rejected-called-aet",
         "association rejected: called AE title not recognised", False),
        (AssociationOutcome(connected=True, rejected=(1, 1, 3), our_ae_title="IEPDESK"), "",
         "rejected-calling-aet", "the remote node does not know our AE title", False),
        (AssociationOutcome(connected=True, rejected=(2, 3, 2)), "", "rejected-local-limit",
         "too many associations", True),
        (AssociationOutcome(connected=True, rejected=(2, 3, 1)), "", "rejected-congestion",
         "temporarily congested", True),
        (AssociationOutcome(connected=True, abort_received=(2, 0)), "", "aborted", "aborted", True),
        (AssociationOutcome(connected=True, timed_out=True, timeout_seconds=30), "", "timeout",
         "the node did not answer within 30 seconds", True),
        (AssociationOutcome(connected=True, no_accepted_contexts=True), "", "no-presentation-context",
         "accepted none", False),
        (AssociationOutcome(node="X@h:1", connect_error=ConnectionRefusedError()), "",
         "connection-refused", "connection refused: nothing listens on h:1", True),
        (AssociationOutcome(node="X@h:1", connect_error=TimeoutError(), timeout_seconds=10), "",
         "timeout", "did not answer within 10 seconds", True),
    ],
    ids=[
        "store_A700_out_of_resources", "move_A702_out_of_resources", "move_A801_destination_unknown",
        "store_A900_sop_class_mismatch", "store_C000_cannot_understand", "store_0122_sop_class",
        "get_B000_some_failed", "missing_status", "rejected_called_aet", "rejected_calling_aet",
        "rejected_local_limit", "rejected_congestion", "aborted", "acse_timeout",
        "no_presentation_context", "connection_refused", "connect_timeout",
    ],
)
def test_failure_mapping(outcome, operation, code, words, retryable) -> None:
    failure = to_failure(outcome, operation=operation)
    assert failure.code == code
    assert words in failure.plain
    assert failure.retryable is retryable
