"""The desk's own C-STORE sender (app.dicom.store_link): what arrives is byte for byte what
was on disk, whatever the peer's PDU size; priorities, refused kinds, silences and
rejections come back as the same plain failures as everywhere else."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import evt

from app.dicom import scu
from app.dicom.ae import AEConfig, Node, Timeouts
from app.dicom.errors import DicomFailure
from app.dicom.store_link import (
    PRIORITY_HIGH,
    PRIORITY_MEDIUM,
    AssociationLost,
    Part10,
    StoreLink,
    read_part10,
)
from app.dicom.synth import make_study
from tests.dicom_peers import QUICK, OrthancPeer, StoreSCP

pytestmark = pytest.mark.timeout(120)


def study(folder: Path, patient_id: str = "LINK-1", **kwargs) -> list[Path]:
    options = dict(patient_name="LINK^TEST", birth_date="19700101", study_date="20240315",
                   n_series=2, n_per_series=3)
    options.update(kwargs)
    return make_study(folder, patient_id=patient_id, **options)


def data_set_bytes(path: Path) -> bytes:
    """The file's data set as pydicom finds it: everything after the file meta group."""
    with path.open("rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)  # pydicom's own reader is the reference here
        return fp.read()


# -- reading the file meta group -----------------------------------------------------------------


def test_read_part10_finds_the_uids_and_the_data_set_where_pydicom_does(tmp_path: Path) -> None:
    for path in study(tmp_path, n_series=1, n_per_series=2):
        part = read_part10(path)
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert (part.sop_class, part.sop_uid, part.syntax) == (
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)
        assert path.read_bytes()[part.data_offset:] == data_set_bytes(path)
        assert part.size == path.stat().st_size


def test_a_file_meta_group_length_that_lies_does_not_move_the_data_set(tmp_path: Path) -> None:
    (path,) = study(tmp_path, n_series=1, n_per_series=1)
    raw = bytearray(path.read_bytes())
    expected = read_part10(path).data_offset
    raw[140:144] = (7).to_bytes(4, "little")  # (0002,0000) says 7 bytes: wrong
    liar = tmp_path / "liar.dcm"
    liar.write_bytes(bytes(raw))
    assert read_part10(liar).data_offset == expected


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda raw: raw[132:], "no DICM prefix"),  # no preamble
        (lambda raw: b"", "no DICM prefix"),
        (lambda raw: raw[:150], "cut short"),
        (lambda raw: raw[:132] + b"\x02\x00\x02\x00UI\x00\x01" + b"1" * 20, "cut short"),
        (lambda raw: raw[:132] + b"\x02\x00\x01\x00OB\x00\x00\xff\xff\xff\xff", "malformed"),
    ],
    ids=["no-preamble", "empty", "meta-cut", "length-past-the-end", "undefined-length"],
)
def test_a_file_that_is_not_part10_is_refused_with_the_reason(tmp_path: Path, make, words: str) -> None:
    (path,) = study(tmp_path, n_series=1, n_per_series=1)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(make(path.read_bytes()))
    with pytest.raises(ValueError, match=words):
        read_part10(bad)


def test_a_file_meta_without_a_sop_instance_uid_is_refused(tmp_path: Path) -> None:
    (path,) = study(tmp_path, n_series=1, n_per_series=1)
    ds = dcmread(path)
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(tmp_path / "nouid.dcm", enforce_file_format=False)
    with pytest.raises(ValueError, match="no valid Media Storage SOP Instance UID"):
        read_part10(tmp_path / "nouid.dcm")


# -- what arrives ------------------------------------------------------------------------------


def test_dcmtk_storescp_receives_every_data_set_byte_for_byte(storescp: StoreSCP, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", n_series=2, n_per_series=4, rows=300, cols=300)  # ~180 KB: 2 PDUs each
    result = scu.send_files(storescp.node, paths, config=QUICK)
    assert result.ok and result.sent == 8 and result.associations == 1
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.files()}
    for path in paths:
        uid = read_part10(path).sop_uid
        assert data_set_bytes(received[uid]) == data_set_bytes(path), f"{uid} differs"


def test_a_peer_with_a_small_pdu_gets_every_byte_in_order(fake_scp, tmp_path: Path) -> None:
    """4 KB PDUs: a 128 KB instance goes in about 32 fragments and the command in one."""
    paths = study(tmp_path / "src", n_series=1, n_per_series=3)
    arrived: dict[str, bytes] = {}

    def handle(event):
        arrived[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    node = fake_scp([(evt.EVT_C_STORE, handle)], max_pdu=4096)
    result = scu.send_files(node, paths, config=QUICK)
    assert result.ok
    assert arrived == {read_part10(p).sop_uid: data_set_bytes(p) for p in paths}


def test_blue_light_goes_as_high_priority_and_the_rest_as_medium(fake_scp, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_series=1, n_per_series=1)
    seen: list[int] = []

    def handle(event):
        seen.append(int(event.request.Priority))
        return 0x0000

    node = fake_scp([(evt.EVT_C_STORE, handle)])
    assert scu.send_files(node, [path], config=QUICK, priority=PRIORITY_HIGH).ok
    assert scu.send_files(node, [path], config=QUICK).ok
    assert seen == [PRIORITY_HIGH, PRIORITY_MEDIUM]


def as_jpeg(path: Path) -> Path:
    """Re-file an instance as JPEG Baseline (a token frame: nobody decodes it here)."""
    ds = dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    return path


def test_an_instance_the_node_refuses_and_we_cannot_decode_stops_the_send_before_anything_is_stored(
    fake_scp, tmp_path: Path
) -> None:
    """Issue 8.6: a refused syntax used to fail alone while the rest were stored (a
    half-stored study); now the pre-flight stops before the first C-STORE."""
    plain, jpeg = study(tmp_path / "src", n_series=1, n_per_series=2)
    as_jpeg(jpeg)  # the fake accepts uncompressed syntaxes only, and the token frame does not decode
    stored: list[str] = []
    node = fake_scp([(evt.EVT_C_STORE, lambda event: stored.append(event.request.AffectedSOPInstanceUID) or 0)])
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(node, [plain, jpeg], config=QUICK)
    assert stored == []
    failure = caught.value
    assert failure.code == "syntax-refused" and not failure.retryable
    assert failure.failed_uids == [read_part10(jpeg).sop_uid]
    assert f"{read_part10(jpeg).sop_uid}: JPEG Baseline" in failure.plain
    assert "this instance cannot be decoded" in failure.plain
    assert failure.partial.sent == 0  # type: ignore[attr-defined]


def test_when_no_kind_is_accepted_the_send_fails_in_plain_words(fake_scp, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_series=1, n_per_series=1)
    ds = dcmread(path)  # a private SOP class: the fake supports none, in no syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"
    ds.save_as(path, enforce_file_format=True)
    node = fake_scp([])
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(node, [path], config=QUICK)
    assert caught.value.code == "no-presentation-context" and not caught.value.retryable


def test_a_node_silent_on_one_instance_fails_that_one_and_the_rest_go_on_a_new_association(
    fake_scp, tmp_path: Path
) -> None:
    paths = study(tmp_path / "src", n_series=1, n_per_series=4)
    stuck = read_part10(paths[1]).sop_uid
    release = threading.Event()
    stored: list[str] = []

    def handle(event):
        uid = event.request.AffectedSOPInstanceUID
        if uid == stuck:
            release.wait(5)
            return 0x0000
        stored.append(uid)
        return 0x0000

    node = fake_scp([(evt.EVT_C_STORE, handle)])
    config = AEConfig(timeouts=Timeouts(connection=2, acse=5, dimse=1, network=30))
    started = time.monotonic()
    try:
        result = scu.send_files(node, paths, config=config)
    finally:
        release.set()
    assert result.failed_uids == [stuck] and result.failed[0].code == "timeout"
    assert "did not answer within 1 seconds" in result.failed[0].plain
    assert result.sent == 3 and len(stored) == 3 and result.associations == 2
    assert time.monotonic() - started < 5


def test_a_wrong_called_ae_title_is_rejected_in_plain_words(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", n_series=1, n_per_series=1)
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(Node("NOTORTHANC", "127.0.0.1", orthanc.node.port), paths, config=QUICK)
    assert caught.value.code == "rejected-called-aet" and not caught.value.retryable
    assert caught.value.partial.sent == 0  # type: ignore[attr-defined]


def test_a_node_that_does_not_know_us_says_so_when_we_send(fake_scp, tmp_path: Path) -> None:
    node = fake_scp([], require_calling=["SOMEONEELSE"])
    with pytest.raises(DicomFailure) as caught:
        scu.send_files(node, study(tmp_path / "src", n_series=1, n_per_series=1), config=QUICK)
    assert caught.value.plain.startswith("the remote node does not know our AE title")


def test_a_link_used_after_release_says_the_association_is_gone(storescp: StoreSCP, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_series=1, n_per_series=1)
    part: Part10 = read_part10(path)
    with StoreLink(storescp.node, [(part.sop_class, part.syntax)], config=QUICK) as link:
        context = link.context_for(part.sop_class, part.syntax)
        assert context is not None
        assert int(link.store(path, part, context).Status) == 0
    with pytest.raises(AssociationLost):
        link.store(path, part, context)


def test_the_nodes_own_words_travel_with_a_failure_status(fake_scp, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_series=1, n_per_series=1)

    def handle(event):
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "archive volume full"
        return status

    result = scu.send_files(fake_scp([(evt.EVT_C_STORE, handle)]), [path], config=QUICK)
    (failure,) = result.failed
    assert failure.code == "status-0xA700" and failure.retryable
    assert failure.plain.endswith('(the node said: "archive volume full")')


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"\x02\x00\x00\x00\x00\x05hello", "in a form we cannot read"),  # an A-ASSOCIATE-AC of garbage
        (b"\x09\x00\x00\x00\x00\x02hi", "a PDU of type 9"),
        (b"\x02\x00\xff\xff\xff\xff", "something we cannot read (a PDU of 4294967295 bytes)"),
    ],
    ids=["garbage-ac", "unknown-pdu", "huge-length"],
)
def test_a_peer_that_answers_nonsense_gets_a_plain_protocol_error(answer: bytes, words: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)
                conn.recv(65536)  # our A-ABORT, or the close

        threading.Thread(target=answer_once, daemon=True).start()
        node = Node("NONSENSE", "127.0.0.1", server.getsockname()[1])
        with pytest.raises(DicomFailure) as caught:
            StoreLink(node, [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")], config=QUICK).open()
    assert caught.value.code == "protocol-error" and words in caught.value.plain
