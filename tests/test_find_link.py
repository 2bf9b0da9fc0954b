"""C-FIND on the desk's own association (app/dicom/find_link.py), against real peers.

What a user relies on: the list of a study's instances that a retrieval and a delivery are
checked against is exactly what the PACS holds, series and instance numbers and descriptions
included, in whatever character set the PACS answers; a search by a name in Greek or Japanese
finds the patient and shows the name as written; a PACS that goes silent, aborts or closes
part-way through a listing, or answers with a failure, ends it in plain words (never a short
list taken for a whole one). Orthanc is the real PACS; a scripted peer at the PDU level
stands in for one that misbehaves (the peer, not the code under test).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from app.dicom import scu, wire
from app.dicom.ae import AEConfig, Timeouts
from app.dicom.errors import DicomFailure
from app.dicom.find_link import FIND_MODEL, _as_text, _decoded, _read_text
from app.dicom.synth import make_study
from app.dicom.wire import encode_command, uid_value, us_value
from tests.dicom_peers import OUR_AE, QUICK, OrthancPeer
from tests.scripted_peer import PduPeer

pytestmark = pytest.mark.timeout(120)

STUDY = "1.2.826.0.1.3680043.9.7777.1"
SERIES = ("1.2.826.0.1.3680043.9.7777.1.1", "1.2.826.0.1.3680043.9.7777.1.2")
CT = "1.2.840.10008.5.1.4.1.1.2"


def held_by(orthanc: OrthancPeer, study_uid: str) -> list[scu.InstanceInfo]:
    """A study's instances as Orthanc's REST API describes them."""
    (hit,) = [h for h in orthanc.rest_post("/tools/lookup", study_uid) if h["Type"] == "Study"]  # type: ignore[union-attr]
    out = []
    for series in orthanc.rest(f"/studies/{hit['ID']}/series"):  # type: ignore[union-attr]
        tags = series["MainDicomTags"]
        for instance in orthanc.rest(f"/series/{series['ID']}/instances"):  # type: ignore[union-attr]
            out.append(scu.InstanceInfo(
                tags["SeriesInstanceUID"], instance["MainDicomTags"]["SOPInstanceUID"],
                str(orthanc.rest(f"/instances/{instance['ID']}/metadata?expand")["SopClassUid"]),  # type: ignore[index]
                tags.get("SeriesNumber", ""), tags.get("SeriesDescription", ""),
                instance["MainDicomTags"].get("InstanceNumber", "")))
    return sorted(out, key=lambda i: (i.series_uid, i.sop_uid))


def sent(orthanc: OrthancPeer, paths: list[Path]) -> str:
    assert scu.send_files(orthanc.node, paths, config=QUICK).ok
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


# -- against Orthanc ---------------------------------------------------------------------------------


def test_a_listing_of_a_study_of_several_series_is_what_orthanc_holds(orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = make_study(tmp_path / "a", patient_id="FINDLINK-1", patient_name="FIND^LINK", birth_date="19700101",
                       study_date="20240315", n_series=3, n_per_series=7, rows=16, cols=16)
    study_uid = sent(orthanc, paths)
    # Another study of the same patient, which must not leak into the listing.
    sent(orthanc, make_study(tmp_path / "b", patient_id="FINDLINK-1", patient_name="FIND^LINK",
                             birth_date="19700101", study_date="20240316", n_series=1, n_per_series=2,
                             rows=16, cols=16))
    listed = scu.list_instances(orthanc.node, study_uid, config=QUICK)
    held = held_by(orthanc, study_uid)
    assert len(held) == 21
    assert sorted(listed, key=lambda i: (i.series_uid, i.sop_uid)) == held
    assert all(i.series_number and i.instance_number and i.sop_class == CT for i in listed)
    assert sorted(scu.find_instances(orthanc.node, study_uid, config=QUICK)) == sorted(
        (i.series_uid, i.sop_uid) for i in held)
    assert scu.list_instances(orthanc.node, "1.2.826.0.1.3680043.9.7777.404", config=QUICK) == []


@pytest.mark.parametrize(("encoding", "charset", "name", "family", "description"), [
    ("Greek", "ISO_IR 126", "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΩΡΓΟΣ", "ΠΑΠΑΔΟΠΟΥΛΟΣ", "ΘΩΡΑΚΑΣ ΜΕ ΣΚΙΑΓΡΑΦΙΚΟ"),
    ("Utf8", "ISO_IR 192", "山田^太郎", "山田", "胸部 造影"),
    ("Latin1", "ISO_IR 100", "MÜLLER^JÜRGEN", "MÜLLER", "THORAX MIT KM"),
], ids=["greek_pacs_answers_iso_ir_126", "japanese_pacs_answers_utf8", "latin1_pacs_answers_iso_ir_100"])
def test_a_name_in_another_script_is_found_and_shown_as_written(
    orthanc_factory, tmp_path: Path, encoding: str, charset: str, name: str, family: str, description: str
) -> None:
    peer = orthanc_factory(modalities={"desk": (OUR_AE, "127.0.0.1", 9)}, extra={"DefaultEncoding": encoding})
    paths = make_study(tmp_path / "src", patient_id=f"FINDLINK-{encoding}", patient_name=name,
                       birth_date="19480314", study_date="20240315", n_series=1, n_per_series=2, rows=16, cols=16,
                       extra={"SpecificCharacterSet": charset, "SeriesDescription": description})
    study_uid = sent(peer, paths)
    (by_name,) = scu.find_studies(peer.node, family_name=family, birth_date=date(1948, 3, 14), config=QUICK)
    assert (by_name.study_uid, by_name.patient_name) == (study_uid, name)
    assert scu.find_studies(peer.node, family_name=family, birth_date=date(1948, 3, 15), config=QUICK) == []
    listed = scu.list_instances(peer.node, study_uid, config=QUICK)
    assert [i.series_description for i in listed] == [description] * 2


# -- the matches read without pydicom are read as pydicom reads them -----------------------------------


def _identifier(charset: str | list[str] | None, **values: object) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "SERIES"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


_KEYS = {0x0020000E: ("SeriesInstanceUID", "UI"), 0x00200011: ("SeriesNumber", "IS"),
         0x0008103E: ("SeriesDescription", "LO"), 0x00080060: ("Modality", "CS")}


@pytest.mark.parametrize("match", [
    _identifier(None, SeriesInstanceUID=SERIES[0], SeriesNumber="3", SeriesDescription="AX T2", Modality="MR"),
    _identifier("ISO_IR 126", SeriesInstanceUID=SERIES[0], SeriesNumber=" 12", SeriesDescription="ΘΩΡΑΚΑΣ  "),
    _identifier("ISO_IR 192", SeriesInstanceUID=SERIES[1] + ".3", SeriesDescription="胸部 造影"),
    _identifier(["", "ISO 2022 IR 87"], SeriesInstanceUID=SERIES[1], SeriesDescription="山田"),
    _identifier("ISO_IR 144", SeriesInstanceUID=SERIES[1], SeriesDescription="Грудь", SeriesNumber=""),
    _identifier(None, SeriesInstanceUID=SERIES[0], Modality=["CT", "PT"]),  # several values: pydicom's reading
    _identifier(None, SeriesInstanceUID=SERIES[0], ReferencedStudySequence=[Dataset()]),  # a sequence on the way
], ids=["ascii", "greek_padded", "utf8", "iso_2022_japanese", "cyrillic_empty_number", "several_values",
        "a_sequence_on_the_way"])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_a_match_read_as_text_says_what_pydicom_says(match: Dataset, implicit: bool) -> None:
    data = encode(match, implicit, True)
    assert data is not None
    light = _read_text(data, implicit, _KEYS)
    assert (light if light is not None else _as_text(_decoded(data, implicit), _KEYS)) == \
        _as_text(decode(io.BytesIO(data), implicit, True), _KEYS)
    if "Modality" not in match or match["Modality"].VM == 1:
        assert light is not None  # the fast path read it itself


# -- a PACS that misbehaves ----------------------------------------------------------------------------


class FindPeer(PduPeer):
    """A C-FIND SCP at the PDU level, for what Orthanc cannot be made to do on cue: go silent,
    abort or close part-way through a listing, answer with a failure or with bytes that do not
    decode. Accepts every proposed context in its first syntax, then runs `script(peer)`."""

    def __init__(self, script: Callable[[FindPeer], None]) -> None:
        super().__init__()
        self.script = script
        self.queries: list[Dataset] = []
        self.start()

    def serve(self) -> None:
        contexts = self.accept(self.next_association())
        self.implicit = any(syntax == "1.2.840.10008.1.2" for _sop, syntax in contexts.values())
        self.script(self)

    def query(self) -> Dataset:
        """Read the next C-FIND-RQ; return its identifier."""
        assert self.wire is not None
        self.context, command = self.wire.read_command()
        assert command.field == wire.C_FIND_RQ and command.text(wire.AFFECTED_SOP_CLASS) == FIND_MODEL
        self.message_id = command.us(wire.MESSAGE_ID)
        data = bytearray()
        self.wire.read_data_set(self.context, data.extend)
        found = decode(io.BytesIO(bytes(data)), self.implicit, True)
        self.queries.append(found)
        return found

    def respond(self, status: int, match: Dataset | bytes | None = None, comment: str = "") -> None:
        assert self.wire is not None
        elements = [
            (wire.AFFECTED_SOP_CLASS, uid_value(FIND_MODEL)),
            (wire.COMMAND_FIELD, us_value(wire.C_FIND_RSP)),
            (wire.RESPONDED_TO, us_value(self.message_id or 0)),
            (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET if match is None else 0x0001)),
            (wire.STATUS, us_value(status)),
        ]
        if comment:
            elements.append((wire.ERROR_COMMENT, wire.text_value(comment)))
        data = match if isinstance(match, bytes | None) else encode(match, self.implicit, True)
        self.wire.send_message(self.context, encode_command(elements), data)

    def list_series(self, *uids: str) -> None:
        self.query()
        for number, uid in enumerate(uids, 1):
            self.respond(0xFF00, _identifier(None, StudyInstanceUID=STUDY, SeriesInstanceUID=uid,
                                             SeriesNumber=str(number), SeriesDescription="AX"))
        self.respond(0x0000)

    def list_images(self, n: int, *, final: bool = True) -> None:
        asked = self.query()
        for i in range(1, n + 1):
            self.respond(0xFF00, _identifier(None, StudyInstanceUID=STUDY, SeriesInstanceUID=asked.SeriesInstanceUID,
                                             SOPInstanceUID=f"{asked.SeriesInstanceUID}.{i}", SOPClassUID=CT,
                                             InstanceNumber=str(i)))
        if final:
            self.respond(0x0000)

    def desk_aborted(self) -> bool:
        """Whether the next PDU from the desk is an A-ABORT."""
        assert self.wire is not None
        self.wire.settimeout(5)
        kind, _ = self.wire.read_pdu()
        return kind == wire.ABORT

    def close(self) -> None:
        self.thread.join(10)
        if self.wire is not None:
            self.wire.close()
        self.listener.close()


def listing_from(script: Callable[[FindPeer], None], config: AEConfig = QUICK) -> tuple[DicomFailure, float]:
    """The failure a listing from a scripted peer ends in, and the seconds it took."""
    peer = FindPeer(script)
    started = time.monotonic()
    try:
        with pytest.raises(DicomFailure) as caught:
            scu.list_instances(peer.node, STUDY, config=config)
        elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert peer.error is None, peer.error
    return caught.value, elapsed


def test_a_whole_listing_runs_its_queries_on_one_association() -> None:
    def script(peer: FindPeer) -> None:
        peer.list_series(*SERIES)
        peer.list_images(3)
        peer.list_images(2)
        assert peer.wire is not None
        kind, _ = peer.wire.read_pdu()
        assert kind == wire.RELEASE_RQ
        peer.wire.send_pdu(wire.RELEASE_RP, bytes(4))

    peer = FindPeer(script)
    try:
        listed = scu.list_instances(peer.node, STUDY, config=QUICK)
    finally:
        peer.close()
    assert peer.error is None, peer.error
    assert [q.QueryRetrieveLevel for q in peer.queries] == ["SERIES", "IMAGE", "IMAGE"]
    assert [(i.series_uid, i.series_number, i.instance_number) for i in listed] == [
        (SERIES[0], "1", "1"), (SERIES[0], "1", "2"), (SERIES[0], "1", "3"), (SERIES[1], "2", "1"),
        (SERIES[1], "2", "2")]


def test_a_pacs_that_goes_silent_mid_listing_fails_within_the_dimse_timeout() -> None:
    def script(peer: FindPeer) -> None:
        peer.list_series(*SERIES)
        peer.list_images(3)
        peer.list_images(2, final=False)
        time.sleep(4)  # silent: no final response

    config = AEConfig(timeouts=Timeouts(connection=2, acse=5, dimse=2, network=30))
    failure, elapsed = listing_from(script, config)
    assert elapsed < 2 + 1.5
    assert failure.code == "timeout" and failure.retryable
    assert "the node did not answer within 2 seconds" in failure.plain


@pytest.mark.parametrize(("ending", "code", "words"), [
    ("abort", "aborted", "the node aborted the association"),
    ("close", "connection-closed", "the node closed the connection without answering"),
    ("release", "connection-closed", "the node closed the connection without answering"),
], ids=["a-abort", "connection-closed", "release-before-the-end"])
def test_a_pacs_that_breaks_off_mid_listing_fails_in_plain_words(ending: str, code: str, words: str) -> None:
    def script(peer: FindPeer) -> None:
        peer.list_series(*SERIES)
        peer.list_images(2, final=False)
        assert peer.wire is not None
        if ending == "abort":
            peer.wire.send_abort()
        elif ending == "release":
            peer.wire.send_pdu(wire.RELEASE_RQ, bytes(4))
            kind, _ = peer.wire.read_pdu()
            assert kind == wire.RELEASE_RP  # the desk answers, then says so
        peer.wire.close()

    failure, _ = listing_from(script)
    assert failure.code == code and failure.retryable
    assert words in failure.plain


def test_a_failure_status_mid_listing_is_the_pacs_own_words() -> None:
    def script(peer: FindPeer) -> None:
        peer.list_series(*SERIES)
        peer.query()
        peer.respond(0xFF00, _identifier(None, SOPInstanceUID=SERIES[0] + ".1", SOPClassUID=CT))
        peer.respond(0xA700, comment="index busy")
        assert peer.desk_aborted()

    failure, _ = listing_from(script)
    assert failure.code == "status-0xA700" and failure.status == 0xA700
    assert '(the node said: "index busy")' in failure.plain


@pytest.mark.parametrize("fault", ["a_match_that_does_not_decode", "a_response_to_another_request",
                                   "a_response_without_a_status"])
def test_a_response_we_cannot_read_aborts_the_listing(fault: str) -> None:
    def script(peer: FindPeer) -> None:
        peer.list_series(*SERIES)
        peer.query()
        if fault == "a_match_that_does_not_decode":
            peer.respond(0xFF00, b"\x08\x00\x18\x00ZZ\x04\x001.2\x00")  # SOP Instance UID in no known VR
        elif fault == "a_response_to_another_request":
            peer.message_id = (peer.message_id or 0) + 9
            peer.respond(0x0000)
        else:
            assert peer.wire is not None
            peer.wire.send_message(peer.context, encode_command((
                (wire.COMMAND_FIELD, us_value(wire.C_FIND_RSP)),
                (wire.RESPONDED_TO, us_value(peer.message_id or 0)),
                (wire.DATA_SET_TYPE, us_value(wire.NO_DATA_SET)),
            )))
        assert peer.desk_aborted()

    failure, _ = listing_from(script)
    assert failure.code == "protocol-error"
    assert "the node sent something we cannot read during the search" in failure.plain


def test_a_pacs_without_the_study_root_find_model_says_so(fake_scp) -> None:
    node = fake_scp([])  # storage and verification only
    with pytest.raises(DicomFailure) as caught:
        scu.list_instances(node, STUDY, config=QUICK)
    assert caught.value.code == "no-presentation-context"
    assert "accepted none of the kinds of object we proposed" in caught.value.plain
