"""Header fix-up: Patient ID := S number, sender's ID kept, every other byte untouched.
And the comparison of the sender's demographics with the register."""

from __future__ import annotations

import io
import struct
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from app.dicom.fixup import CHANGED_TAGS, compare_with_register, fix_up
from app.dicom.scp import _walk_items, read_meta
from app.dicom.synth import make_instance

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = 0x7FE00010


def elements(path: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(file meta bytes, [(tag, encoded element bytes)]) of the top level of a file —
    a raw walk, independent of pydicom, so "unchanged" means byte for byte."""
    raw = path.read_bytes()
    start = 132 + 12 + struct.unpack("<I", raw[140:144])[0]
    implicit = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_implicit_VR
    fp = io.BytesIO(raw)
    fp.seek(start)
    out = []
    while fp.tell() < len(raw):
        pos = fp.tell()
        group, elem = struct.unpack("<HH", fp.read(4))
        if implicit:
            (length,) = struct.unpack("<I", fp.read(4))
        else:
            vr = fp.read(2)
            (length,) = struct.unpack("<I", fp.read(6)[2:]) if vr in LONG_VRS else struct.unpack("<H", fp.read(2))
        if length == 0xFFFFFFFF:
            _walk_items(fp, len(raw), implicit, "<", 1, defined=False, datasets=(group, elem) != (0x7FE0, 0x0010))
        else:
            fp.seek(length, 1)
        out.append((group << 16 | elem, raw[pos:fp.tell()]))
    return raw[:start], out


def write_instance(path: Path, *, implicit: bool = False, pixels: bool = True, **extra) -> Path:
    ds = make_instance(
        patient_id="RX1-445566",
        patient_name="O'BRIEN^Siobhan^Mary",
        birth_date="19900630",
        study_uid="1.2.826.0.1.3680043.8.498.1",
        series_uid="1.2.826.0.1.3680043.8.498.1.1",
        study_date="20240401",
        accession="RX1ACC",
        extra={"IssuerOfPatientID": "RX1", **extra},
    )
    code = Dataset()
    code.CodeValue = "CTHEAD"
    code.CodingSchemeDesignator = "99RX1"
    code.CodeMeaning = "CT head"
    ds.ProcedureCodeSequence = Sequence([code])
    ds["ProcedureCodeSequence"].is_undefined_length = True  # as many modalities write them
    ds.ProcedureCodeSequence[0].is_undefined_length_sequence_item = True
    ds.add_new(0x00091010, "LO", "RX1 PRIVATE")  # a private element, kept as it is
    if not pixels:
        del ds.PixelData
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_only_patient_ids_changed(before: Path, after: Path) -> None:
    meta_a, elems_a = elements(before)
    meta_b, elems_b = elements(after)
    assert meta_a == meta_b
    kept_a = [(t, b) for t, b in elems_a if t not in CHANGED_TAGS]
    kept_b = [(t, b) for t, b in elems_b if t not in CHANGED_TAGS]
    assert kept_a == kept_b
    raw_a, raw_b = before.read_bytes(), after.read_bytes()
    pixels_a = [b for t, b in elems_a if t == PIXEL_DATA]
    if pixels_a:  # everything from Pixel Data to the end is copied byte for byte
        tail = raw_a[raw_a.index(pixels_a[0]):]
        assert raw_b.endswith(tail)


def test_only_the_patient_id_elements_change_and_every_other_byte_is_kept(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm")
    assert fix_up(src, tmp_path / "out.dcm", s_number="S1234567") is True
    assert_only_patient_ids_changed(src, tmp_path / "out.dcm")
    out = dcmread(tmp_path / "out.dcm")
    assert (out.PatientID, out.IssuerOfPatientID) == ("S1234567", "UHL")
    (item,) = out.OtherPatientIDsSequence
    assert (item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID) == ("RX1-445566", "RX1", "TEXT")
    assert out.PixelData == dcmread(src).PixelData


def test_existing_other_patient_ids_are_kept_and_the_sender_id_appended(tmp_path: Path) -> None:
    nhs = Dataset()
    nhs.PatientID = "9990000018"
    nhs.IssuerOfPatientID = "NHS"
    nhs.TypeOfPatientID = "TEXT"
    src = write_instance(tmp_path / "in.dcm", OtherPatientIDsSequence=Sequence([nhs]))
    fix_up(src, tmp_path / "out.dcm", s_number="S1234567", issuer_of_local_id="UHL-PAS")
    items = dcmread(tmp_path / "out.dcm").OtherPatientIDsSequence
    assert [(i.PatientID, i.IssuerOfPatientID) for i in items] == [("9990000018", "NHS"), ("RX1-445566", "RX1")]
    assert dcmread(tmp_path / "out.dcm").IssuerOfPatientID == "UHL-PAS"
    assert_only_patient_ids_changed(src, tmp_path / "out.dcm")


def test_running_fix_up_twice_changes_nothing(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm")
    fix_up(src, tmp_path / "once.dcm", s_number="S1234567")
    assert fix_up(tmp_path / "once.dcm", tmp_path / "twice.dcm", s_number="S1234567") is False
    assert (tmp_path / "twice.dcm").read_bytes() == (tmp_path / "once.dcm").read_bytes()


def test_an_item_already_holding_the_sender_id_is_not_duplicated(tmp_path: Path) -> None:
    same = Dataset()
    same.PatientID = "RX1-445566"
    same.IssuerOfPatientID = "RX1"
    src = write_instance(tmp_path / "in.dcm", OtherPatientIDsSequence=Sequence([same]))
    fix_up(src, tmp_path / "out.dcm", s_number="S1234567")
    assert len(dcmread(tmp_path / "out.dcm").OtherPatientIDsSequence) == 1


def test_issuer_qualifiers_move_with_the_sender_id(tmp_path: Path) -> None:
    qualifier = Dataset()
    qualifier.UniversalEntityID = "2.16.840.1.113883.2.1.4.1"
    qualifier.UniversalEntityIDType = "ISO"
    src = write_instance(tmp_path / "in.dcm", IssuerOfPatientIDQualifiersSequence=Sequence([qualifier]))
    fix_up(src, tmp_path / "out.dcm", s_number="S1234567")
    out = dcmread(tmp_path / "out.dcm")
    assert "IssuerOfPatientIDQualifiersSequence" not in out
    (item,) = out.OtherPatientIDsSequence
    assert item.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "2.16.840.1.113883.2.1.4.1"
    assert_only_patient_ids_changed(src, tmp_path / "out.dcm")


def test_implicit_vr_files_stay_implicit_and_untouched_elsewhere(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm", implicit=True)
    fix_up(src, tmp_path / "out.dcm", s_number="S7654321")
    assert_only_patient_ids_changed(src, tmp_path / "out.dcm")
    assert dcmread(tmp_path / "out.dcm").file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_in_place_and_without_pixel_data(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm", pixels=False)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(src.read_bytes())
    assert fix_up(copy, copy, s_number="S0000003") is True
    assert_only_patient_ids_changed(src, copy)
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("case", ["big-endian", "greek", "undefined-length-other-ids", "group-length",
                                  "no-patient-group"])
def test_the_quick_splice_writes_what_a_whole_header_rewrite_would(tmp_path: Path, case: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """fix_up re-encodes only the patient group; pydicom's whole-header rewrite (still used
    for deflated files) is the reference: the two must read back as the same data set."""
    extra: dict = {}
    if case == "greek":
        extra = {"SpecificCharacterSet": "ISO_IR 126", "PatientName": "Διονυσιος^Παπαδοπουλος",
                 "IssuerOfPatientID": "ΑΘΗΝΑ"}
    if case == "undefined-length-other-ids":
        nhs = Dataset()
        nhs.PatientID = "9990000018"
        nhs.IssuerOfPatientID = "NHS"
        extra = {"OtherPatientIDsSequence": Sequence([nhs])}
    src = write_instance(tmp_path / "in.dcm", **extra)
    ds = dcmread(src)
    if case == "undefined-length-other-ids":
        ds["OtherPatientIDsSequence"].is_undefined_length = True
    if case == "big-endian":
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
        dcmwrite(src, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    elif case == "group-length":
        ds.add_new(0x00100000, "UL", 0)  # retired, and wrong once the group changes
        ds.save_as(src)
    elif case == "no-patient-group":
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(src)
    else:
        ds.save_as(src)
    assert fix_up(src, tmp_path / "quick.dcm", s_number="S1234567") is True
    with monkeypatch.context() as patch:
        import app.dicom.fixup as module

        patch.setattr(module, "_splice", lambda *args: None)
        assert fix_up(src, tmp_path / "whole.dcm", s_number="S1234567") is True
    quick, whole = dcmread(tmp_path / "quick.dcm"), dcmread(tmp_path / "whole.dcm")
    assert quick == whole and quick.file_meta == whole.file_meta
    assert (quick.PatientID, quick.IssuerOfPatientID) == ("S1234567", "UHL")
    assert 0x00100000 not in quick
    if case == "greek":
        assert str(quick.PatientName) == "Διονυσιος^Παπαδοπουλος"
        assert quick.OtherPatientIDsSequence[-1].IssuerOfPatientID == "ΑΘΗΝΑ"


def test_a_sender_without_a_patient_id_gets_the_s_number_and_no_empty_item(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm", PatientID="", IssuerOfPatientID="")
    fix_up(src, tmp_path / "out.dcm", s_number="S1234567")
    out = dcmread(tmp_path / "out.dcm")
    assert out.PatientID == "S1234567" and "OtherPatientIDsSequence" not in out


def test_an_s_number_is_required(tmp_path: Path) -> None:
    src = write_instance(tmp_path / "in.dcm")
    with pytest.raises(ValueError):
        fix_up(src, tmp_path / "out.dcm", s_number="  ")
    assert not (tmp_path / "out.dcm").exists()


# -- the register comparison ----------------------------------------------------------------------

REGISTER = {"family_name": "O'Brien", "given_name": "Siobhan", "dob": date(1990, 6, 30),
            "nhs_number": "999 000 0018"}


def meta(**changes) -> dict:
    base = {"patient_name": "OBRIEN^SIOBHAN^MARY", "birth_date": "19900630",
            "patient_id": "RX1-445566", "issuer_of_patient_id": "RX1", "other_patient_ids": ()}
    return {**base, **changes}


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (meta(), []),
        (meta(patient_name="O'BRIEN^Siobhan"), []),
        (meta(patient_name="BRIEN^SIOBHAN"), [("family_name", "BRIEN", "O'Brien")]),
        (meta(patient_name="OBRIEN^SHAVON"), [("given_name", "SHAVON", "Siobhan")]),
        (meta(birth_date="19900603"), [("dob", "19900603", "1990-06-30")]),
        (meta(birth_date=""), [("dob", "", "1990-06-30")]),
        (meta(patient_id="9990000026"), [("nhs_number", "9990000026", "9990000018")]),
        (meta(other_patient_ids=(("9990000018", "NHS"),)), []),
        (meta(other_patient_ids=(("999 000 0034", "NHS England"),)), [("nhs_number", "9990000034", "9990000018")]),
        (meta(patient_name="SMITH^JOHN", birth_date="19480314"),
         [("family_name", "SMITH", "O'Brien"), ("given_name", "JOHN", "Siobhan"), ("dob", "19480314", "1990-06-30")]),
    ],
    ids=["all_match", "case_and_apostrophe_ignored", "family_differs", "given_differs", "dob_differs",
         "dob_missing", "patient_id_is_another_nhs_number", "nhs_in_other_ids_matches",
         "nhs_in_other_ids_differs", "wrong_patient"],
)
def test_compare_with_register(sender, expected) -> None:
    assert compare_with_register(sender, REGISTER) == expected


def test_compare_accepts_the_scp_metadata(tmp_path: Path) -> None:
    path = write_instance(tmp_path / "in.dcm")
    info = read_meta(dcmread(path, stop_before_pixels=True))
    assert compare_with_register(info, REGISTER) == []
