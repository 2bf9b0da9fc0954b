"""C-GET on the desk's own association (app/dicom/get_link.py), against real peers.

What a user relies on: every instance of a study arrives byte for byte in the syntax it is
stored in; a malformed one is quarantined with its reason and the rest still arrive; a PACS
that goes silent or aborts mid-instance ends the retrieval in plain words within the DIMSE
timeout, with no partial file left and nothing counted that did not arrive; a cancel stops
it. Orthanc is the real PACS; a pynetdicom AE stands in for a PACS that misbehaves (the peer,
not the code under test).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pynetdicom import evt

from app.dicom import scp, scu, wire
from app.dicom.ae import AEConfig, Timeouts
from app.dicom.errors import DicomFailure
from app.dicom.get_link import GET_MODEL, GetLink
from app.dicom.store_link import read_part10, store_command
from app.dicom.synth import make_instance, make_study
from app.dicom.wire import encode_command, uid_value, us_value
from tests.dicom_peers import QUICK, OrthancPeer, rss_kb
from tests.scripted_peer import PduPeer
from tests.test_store_link import data_set_bytes
from tests.test_syntaxes import stored_file

pytestmark = pytest.mark.timeout(180)


def study(folder: Path, patient_id: str, **kwargs) -> list[Path]:
    options = dict(patient_name="GET^LINK", birth_date="19700101", study_date="20240315", n_series=1,
                   n_per_series=3)
    options.update(kwargs)
    return make_study(folder, patient_id=patient_id, **options)


def stored_in(orthanc: OrthancPeer, paths: list[Path]) -> str:
    assert scu.send_files(orthanc.node, paths, config=QUICK).ok
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def leftovers(dest: Path) -> list[Path]:
    """Partial files the receiver may have left behind."""
    return sorted((dest / ".incoming").glob("*")) if (dest / ".incoming").is_dir() else []


# -- a whole study, as the PACS holds it -------------------------------------------------------------


def test_a_study_of_several_series_arrives_byte_for_byte_as_orthanc_holds_it(orthanc: OrthancPeer,
                                                                            tmp_path: Path) -> None:
    paths = study(tmp_path / "src", "GETLINK-1", n_series=3, n_per_series=4, rows=128, cols=128)
    study_uid = stored_in(orthanc, paths)
    progress: list[tuple[int, int]] = []
    result = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "got", config=QUICK,
                                on_progress=lambda n, size: progress.append((n, size)))
    assert result.ok and (result.completed, result.failed, result.remaining) == (12, 0, 0)
    originals = {read_part10(p).sop_uid: p for p in paths}
    assert {p.stem for p in result.files} == set(originals)
    assert {dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in result.files} == \
        {dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in paths}
    for path in result.files:
        assert path.parent == tmp_path / "got"
        at_pacs = tmp_path / "pacs.dcm"
        at_pacs.write_bytes(stored_file(orthanc, path.stem))
        assert data_set_bytes(path) == data_set_bytes(at_pacs) == data_set_bytes(originals[path.stem])
        meta = read_part10(path)
        assert (meta.sop_class, meta.syntax) == (read_part10(at_pacs).sop_class, read_part10(at_pacs).syntax)
    # Progress per instance, in bytes of whole files written, ending on what is on disk.
    assert [n for n, _ in progress] == list(range(1, 13))
    assert progress[-1][1] == result.bytes_received == sum(p.stat().st_size for p in result.files)
    assert leftovers(tmp_path / "got") == []


def test_a_retry_fetches_only_the_missing_instances_of_a_series(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", "GETLINK-RETRY", n_series=2, n_per_series=5)
    study_uid = stored_in(orthanc, paths)
    series = str(dcmread(paths[6], stop_before_pixels=True).SeriesInstanceUID)
    wanted = [read_part10(p).sop_uid for p in paths
              if str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) == series][1:4]
    result = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "got", config=QUICK,
                                series_uid=series, sop_uids=wanted)
    assert result.ok and result.completed == 3
    assert sorted(p.stem for p in result.files) == sorted(wanted)
    assert sorted(p.stem for p in (tmp_path / "got").glob("*.dcm")) == sorted(wanted)


def test_the_get_link_speaks_to_orthanc_in_the_syntax_the_get_context_took(orthanc: OrthancPeer,
                                                                          tmp_path: Path) -> None:
    """The identifier goes in the Get context's syntax, whichever of the two Orthanc took,
    and the pending responses carry the running counts."""
    paths = study(tmp_path / "src", "GETLINK-RAW", n_per_series=2)
    study_uid = stored_in(orthanc, paths)
    query = scu._retrieve_query(study_uid)
    received: list[scp.Received] = []
    with GetLink(orthanc.node, ["1.2.840.10008.5.1.4.1.1.2"], config=QUICK) as link:
        responses = list(link.get(query, storage_dir=tmp_path / "got", quarantine_dir=tmp_path / "q",
                                  on_store=received.append))
    statuses = [int(status.Status) for status, _ in responses]
    assert statuses[-1] == 0x0000 and set(statuses[:-1]) <= {0xFF00}
    assert responses[-1][0].NumberOfCompletedSuboperations == 2
    assert [r.status for r in received] == [0, 0]
    assert all(r.path is not None and r.path.exists() for r in received)


# -- a malformed instance from the peer ----------------------------------------------------------------


def test_a_malformed_instance_is_quarantined_with_its_reason_and_the_rest_arrive(fake_scp, tmp_path: Path) -> None:
    common = dict(patient_id="P1", patient_name="A^B", birth_date="19700101", study_uid="1.2.3.4",
                  series_uid="1.2.3.4.1", study_date="20240101", accession="X")
    first, broken, last = (make_instance(instance_number=n, **common) for n in (1, 2, 3))
    # A private element of undefined length whose value is not items: the structure walk
    # must refuse it (pydicom reading the header alone would not notice).
    element = DataElement(0x00091010, "OB", b"\x01\x02\x03\x04" * 8)
    element.is_undefined_length = True
    broken.add(element)
    sent: list[str] = []

    def handle_get(event):
        yield 3
        for ds in (first, broken, last):
            sent.append(ds.SOPInstanceUID)
            yield 0xFF00, ds

    node = fake_scp([(evt.EVT_C_GET, handle_get)], qr=True)
    result = scu.retrieve_study(node, "1.2.3.4", tmp_path / "got", config=QUICK)
    assert sent == [first.SOPInstanceUID, broken.SOPInstanceUID, last.SOPInstanceUID]
    assert result.status == 0xB000 and (result.completed, result.failed) == (2, 1) and not result.ok
    assert result.failed_uids == [broken.SOPInstanceUID]
    assert sorted(p.stem for p in result.files) == sorted([first.SOPInstanceUID, last.SOPInstanceUID])
    (reason,) = (tmp_path / "got" / "quarantine").glob("*.reason.txt")
    text = reason.read_text()
    assert "malformed data set" in text and broken.SOPInstanceUID in text
    assert reason.with_name(reason.name.replace(".reason.txt", ".dcm")).exists()
    assert leftovers(tmp_path / "got") == []


# -- the PACS fails under us ------------------------------------------------------------------------


def _big_study_in(peer: OrthancPeer, tmp_path: Path, patient_id: str, n: int = 6) -> str:
    """Instances of 8 MB: long enough on the wire to be caught half-way."""
    return stored_in(peer, study(tmp_path / "src", patient_id, n_per_series=n, rows=2048, cols=2048))


def _when_half_way(dest: Path, then, deadline: float = 30.0) -> threading.Thread:
    """Run `then()` as soon as an instance is part-way into its file (a .part holding more
    than its header, less than a whole instance)."""

    def watch() -> None:
        stop = time.monotonic() + deadline
        while time.monotonic() < stop:
            for part in leftovers(dest):
                with_data = part.stat().st_size if part.exists() else 0
                if 1024 * 1024 < with_data < 6 * 1024 * 1024:
                    then(part)
                    return
            time.sleep(0.0005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_pacs_that_goes_silent_mid_instance_fails_within_the_dimse_timeout_leaving_no_partial_file(
    orthanc_factory, tmp_path: Path
) -> None:
    peer = orthanc_factory(modalities={"desk": ("IEPDESK", "127.0.0.1", 9)})
    study_uid = _big_study_in(peer, tmp_path, "GETLINK-SILENT")
    dest = tmp_path / "got"
    caught_part: list[Path] = []

    def freeze(part: Path) -> None:
        caught_part.append(part)
        os.kill(peer.proc.pid, signal.SIGSTOP)

    progress: list[int] = []
    config = AEConfig(timeouts=Timeouts(connection=2, acse=5, dimse=2, network=30))
    watcher = _when_half_way(dest, freeze)
    started = time.monotonic()
    try:
        with pytest.raises(DicomFailure) as caught:
            scu.retrieve_study(peer.node, study_uid, dest, config=config,
                               on_progress=lambda n, size: progress.append(n))
    finally:
        os.kill(peer.proc.pid, signal.SIGCONT)
    elapsed = time.monotonic() - started
    watcher.join(1)
    assert caught_part, "the retrieval never had an instance part-way"
    assert caught.value.code == "timeout" and caught.value.retryable
    assert "did not answer within 2 seconds" in caught.value.plain
    assert elapsed < 2 + 5  # the DIMSE timeout, not minutes
    assert not caught_part[0].exists() and leftovers(dest) == []
    on_disk = sorted(dest.glob("*.dcm"))
    assert len(on_disk) == len(progress) < 6  # counted = complete files on disk, no more
    for path in on_disk:
        assert dcmread(path).SOPInstanceUID == path.stem  # each whole, pixels and all


class ScriptedPeer(PduPeer):
    """A C-GET SCP at the PDU level, for what a pynetdicom peer cannot be made to do (it
    queues a whole data set before anything else): stop half-way through an instance, send
    on a context we never accepted. Accepts every proposed context in its first syntax
    (the last refused, with `refuse_last`), reads the C-GET-RQ, then runs `script(peer)`."""

    def __init__(self, script, *, refuse_last: bool = False) -> None:  # noqa: ANN001 - a test's closure
        super().__init__()
        self.script = script
        self.refuse_last = refuse_last
        self.refused: int | None = None
        self.contexts: dict[int, tuple[str, str]] = {}
        self.start()

    def serve(self) -> None:
        while True:  # the desk asks a C-FIND association first: refused, as by a PACS without one
            asked = self.next_association()
            if any(str(cx.abstract_syntax) == GET_MODEL for cx in asked.presentation_context_definition_list):
                break
            assert self.wire is not None
            self.wire.sock.sendall(bytes((wire.ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, 1, 1, 1)))  # permanent, no reason
            self.wire.close()
        self.contexts = self.accept(asked, refuse_last=self.refuse_last)
        if self.refuse_last:
            self.refused = int(asked.presentation_context_definition_list[-1].context_id)
        assert self.wire is not None
        self.get_context, command = self.wire.read_command()
        self.get_id = command.us(wire.MESSAGE_ID)
        self.wire.read_data_set(self.get_context, lambda piece: None)
        self.script(self)

    def context(self, sop_class: str, syntax: str) -> int:
        return next(cid for cid, kind in self.contexts.items() if kind == (sop_class, syntax))

    def store(self, path: Path, *, upto: int | None = None, context: int | None = None) -> None:
        """A C-STORE-RQ with the file's data set (or its first `upto` bytes and no end)."""
        assert self.wire is not None
        part = read_part10(path)
        data = path.read_bytes()[part.data_offset:]
        cid = context or self.context(part.sop_class, part.syntax)
        self.wire.send_pdv(cid, store_command(part.sop_class, part.sop_uid, 7, 0), wire.COMMAND | wire.LAST)
        if upto is None:
            self.wire.send_pdv(cid, data, wire.LAST)
            _, response = self.wire.read_command()
            assert response.field == wire.C_STORE_RSP
        else:
            self.wire.send_pdv(cid, data[:upto], 0)

    def pending(self, remaining: int, completed: int) -> None:
        assert self.wire is not None
        self.wire.send_message(self.get_context, encode_command((
            (wire.AFFECTED_SOP_CLASS, uid_value("1.2.840.10008.5.1.4.1.2.2.3")),
            (wire.COMMAND_FIELD, us_value(wire.C_GET_RSP)),
            (wire.RESPONDED_TO, us_value(self.get_id or 0)),
            (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET)),
            (wire.STATUS, us_value(0xFF00)),
            (wire.REMAINING, us_value(remaining)),
            (wire.COMPLETED, us_value(completed)),
            (wire.FAILED, us_value(0)),
            (wire.WARNING, us_value(0)),
        )))

    def close(self) -> None:
        """Let the script finish what it reads (the desk's A-ABORT), then close."""
        self.thread.join(10)
        if self.wire is not None:
            self.wire.close()
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(("ending", "code", "words"), [
    ("abort", "aborted", "the node aborted the association"),
    ("close", "connection-closed", "the node closed the connection without answering"),
], ids=["a-abort", "connection-closed"])
def test_a_pacs_that_breaks_off_mid_instance_fails_in_plain_words_leaving_no_partial_file(
    tmp_path: Path, ending: str, code: str, words: str
) -> None:
    first, second, _ = study(tmp_path / "src", "GETLINK-BREAK", rows=256, cols=256)
    dest = tmp_path / "got"
    half_way: list[list[Path]] = []

    def script(peer: ScriptedPeer) -> None:
        peer.store(first)
        peer.pending(2, 1)
        peer.store(second, upto=60_000)
        time.sleep(0.3)
        half_way.append(leftovers(dest))  # the receiver has the instance part-way
        assert peer.wire is not None
        if ending == "abort":
            peer.wire.send_abort()
        peer.wire.close()

    peer = ScriptedPeer(script)
    progress: list[int] = []
    try:
        with pytest.raises(DicomFailure) as caught:
            scu.retrieve_study(peer.node, "1.2.3.7", dest, config=QUICK,
                               on_progress=lambda n, size: progress.append(n))
    finally:
        peer.close()
    assert peer.error is None, peer.error
    (part,) = half_way[0]
    assert caught.value.code == code and caught.value.retryable
    assert words in caught.value.plain
    assert not part.exists() and leftovers(dest) == []
    assert progress == [1] and [p.stem for p in dest.glob("*.dcm")] == [read_part10(first).sop_uid]


def test_a_data_set_on_a_context_the_peer_refused_aborts_as_a_protocol_error(tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", "GETLINK-CONTEXT", n_per_series=1)
    dest = tmp_path / "got"

    def script(peer: ScriptedPeer) -> None:
        assert peer.refused is not None
        peer.store(path, upto=100, context=peer.refused)
        assert peer.wire is not None
        peer.wire.settimeout(5)
        kind, _ = peer.wire.read_pdu()
        assert kind == wire.ABORT  # the desk aborted

    peer = ScriptedPeer(script, refuse_last=True)
    try:
        with pytest.raises(DicomFailure) as caught:
            scu.retrieve_study(peer.node, "1.2.3.8", dest, config=QUICK)
    finally:
        peer.close()
    assert peer.error is None, (peer.error, caught.value)
    assert caught.value.code == "protocol-error"
    assert f"presentation context {peer.refused}, which we did not accept" in caught.value.plain
    assert leftovers(dest) == [] and list(dest.glob("*.dcm")) == []


def test_cancel_stops_the_retrieval_and_the_pacs_serves_the_next_one(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", "GETLINK-CANCEL", n_per_series=10)
    study_uid = stored_in(orthanc, paths)
    done: list[int] = []
    result = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "cancelled", config=QUICK,
                                on_progress=lambda n, size: done.append(n), should_cancel=lambda: len(done) >= 3)
    assert result.cancelled and not result.ok
    assert len(result.files) == 3 == len(list((tmp_path / "cancelled").glob("*.dcm")))
    assert leftovers(tmp_path / "cancelled") == []
    again = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "again", config=QUICK)
    assert again.ok and len(again.files) == 10


def test_a_pacs_without_c_get_says_to_use_c_move(fake_scp, tmp_path: Path) -> None:
    node = fake_scp([])  # storage and verification only: no Get model
    with pytest.raises(DicomFailure) as caught:
        scu.retrieve_study(node, "1.2.3.6", tmp_path / "got", config=QUICK)
    assert caught.value.code == "no-presentation-context" and not caught.value.retryable


# -- memory -------------------------------------------------------------------------------------------


def test_retrieving_200_instances_keeps_memory_flat(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", "GETLINK-MEM", n_series=2, n_per_series=100, rows=512, cols=512)
    study_uid = stored_in(orthanc, paths)
    scu.retrieve_study(orthanc.node, study_uid, tmp_path / "warm", config=QUICK)
    before = rss_kb()
    result = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "got", config=QUICK)
    growth_mb = (rss_kb() - before) / 1024
    assert result.ok and len(result.files) == 200
    # 200 x 0.5 MB = 100 MB went through; one PDU at a time is held.
    assert growth_mb < 15, f"RSS grew {growth_mb:.1f} MB"
