"""The identity check compares names in any script: Greek, Cyrillic, Japanese (ISO 2022
multi-component names), accented Latin. A name it cannot compare stops, never matches.

Unit rows first (compare_with_register on a decoded name), then the gateway's real path
(a file in the sender's character set, read by read_meta), then the engine end to end.
"""

from __future__ import annotations

import warnings
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataelem import DataElement

from app.dicom.fixup import compare_with_register
from app.dicom.scp import read_meta
from app.dicom.synth import make_instance, make_study
from app.extensions import db
from app.patients.models import Patient
from app.requests.statuses import Status
from app.transfers import service
from app.transfers.models import InboundStudy, Transfer, TransferState
from app.workflow.machine import transition
from tests.conftest import csrf_token
from tests.dicom_peers import run_storescu
from tests.forms_data import valid_import
from tests.test_transfers import (  # noqa: F401 - fixtures used by the end-to-end tests
    _login,
    _request,
    _study_uid,
    clean_queues,
    gateway,
    nodes,
    remote,
    run_workers,
)

DOB = "19800101"


def register(family: str, given: str) -> dict:
    return {"family_name": family, "given_name": given, "dob": date(1980, 1, 1), "nhs_number": ""}


def sender(name: str) -> dict:
    return {"patient_name": name, "birth_date": DOB, "patient_id": "X1", "issuer_of_patient_id": "",
            "other_patient_ids": ()}


JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"

CASES = [
    ("greek_names_differ_is_a_mismatch", "ΝΙΚΟΛΑΟΥ^ΜΑΡΙΑ", register("Παπαδόπουλος", "Γιώργος"),
     [("family_name", "ΝΙΚΟΛΑΟΥ", "Παπαδόπουλος"), ("given_name", "ΜΑΡΙΑ", "Γιώργος")]),
    ("greek_family_names_differ_is_a_mismatch", "ΠΑΠΑΔΑΚΗΣ^ΓΙΩΡΓΟΣ", register("Παπαδόπουλος", "Γιώργος"),
     [("family_name", "ΠΑΠΑΔΑΚΗΣ", "Παπαδόπουλος")]),
    ("greek_same_name_in_capitals_without_accents_matches", "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΩΡΓΟΣ",
     register("Παπαδόπουλος", "Γιώργος"), []),
    ("greek_final_sigma_and_accents_ignored", "Παπαδοπουλος^Γιωργος", register("ΠΑΠΑΔΌΠΟΥΛΟΣ", "ΓΙΏΡΓΟΣ"), []),
    ("cyrillic_names_differ_is_a_mismatch", "ПЕТРОВ^ИВАН", register("Иванов", "Иван"),
     [("family_name", "ПЕТРОВ", "Иванов")]),
    ("cyrillic_same_name_any_case_matches", "ИВАНОВА^АННА^СЕРГЕЕВНА", register("Иванова", "Анна"), []),
    ("cyrillic_yo_matches_ye", "ФЁДОРОВ^ПЁТР", register("Федоров", "Петр"), []),
    ("dropped_umlaut_letter_is_a_mismatch", "Mller^Hans", register("Müller", "Hans"),
     [("family_name", "Mller", "Müller")]),
    ("umlaut_matches_plain_capitals", "Müller^Hans", register("MULLER", "HANS"), []),
    ("apostrophe_hyphen_and_case_ignored", "O'BRIEN-SMITH^Siobhan", register("OBrien Smith", "SIOBHAN"), []),
    ("letter_with_stroke_matches_plain_letter", "Søren^Łukasz", register("SOREN", "Lukasz"), []),
    ("japanese_multi_component_matches_latin_register", JAPANESE, register("YAMADA", "Tarou"), []),
    ("japanese_multi_component_matches_kanji_register", JAPANESE, register("山田", "太郎"), []),
    ("japanese_multi_component_matches_katakana_register", JAPANESE, register("ヤマダ", "タロウ"), []),
    ("japanese_half_width_katakana_matches", "=山田^太郎=ﾔﾏﾀﾞ^ﾀﾛｳ", register("やまだ", "たろう"), []),
    ("japanese_ideographic_group_only_matches_kanji_register", "=山田^太郎", register("山田", "太郎"), []),
    ("japanese_different_kanji_is_a_mismatch", JAPANESE, register("山本", "太郎"),
     [("family_name", "Yamada = 山田 = やまだ", "山本")]),
    ("kana_voiced_and_unvoiced_differ_is_a_mismatch", "=山田^太郎=やまだ^たろう", register("やまた", "たろう"),
     [("family_name", "山田 = やまだ", "やまた")]),
    ("empty_name_is_a_mismatch", "", register("Smith", "John"),
     [("family_name", "", "Smith"), ("given_name", "", "John")]),
    ("question_marks_for_unencodable_letters_is_a_mismatch", "????????????^???????",
     register("Παπαδόπουλος", "Γιώργος"),
     [("family_name", "????????????", "Παπαδόπουλος"), ("given_name", "???????", "Γιώργος")]),
    ("question_marks_against_an_empty_register_is_a_mismatch", "?^?", register("", ""),
     [("family_name", "?", ""), ("given_name", "?", "")]),
    ("replacement_character_is_a_mismatch", "M\ufffdller^Hans", register("Mller", "Hans"),
     [("family_name", "M\ufffdller^Hans", "Mller")]),
    ("left_over_iso_2022_escape_is_a_mismatch_shown_without_it", "Yamada^Tarou=\x1b$B\xff\xff",
     register("YAMADA", "Tarou"), [("family_name", "Yamada^Tarou=\ufffd$B\xff\xff", "YAMADA")]),
    ("missing_given_name_is_a_mismatch", "SMITH", register("Smith", "John"), [("given_name", "", "John")]),
]


@pytest.mark.parametrize(("name", "reg", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_names_compare_in_any_script(name, reg, expected) -> None:
    assert compare_with_register(sender(name), reg) == expected


# -- the gateway's path: bytes in the sender's character set, decoded by read_meta ----------------


def _file_in(tmp_path: Path, charset: str | list[str], name: str | bytes) -> Path:
    """A synthetic instance whose PN is written in `charset` (bytes are written as they are)."""
    ds = make_instance(patient_id="X1", patient_name="PLACEHOLDER", birth_date=DOB, study_uid="1.2.826.0.1.3",
                       series_uid="1.2.826.0.1.3.1", study_date="20240101", accession="A1", rows=8, cols=8,
                       extra={"SpecificCharacterSet": charset})
    ds["PatientName"] = DataElement(0x00100010, "PN", name)
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _as_the_gateway_reads(path: Path):  # noqa: ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about bytes it cannot decode
        return read_meta(dcmread(path, stop_before_pixels=True))


WIRE = [
    ("greek_iso_ir_126_decodes_and_matches", "ISO_IR 126", "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΓΙΩΡΓΟΣ",
     register("Παπαδόπουλος", "Γιώργος"), []),
    ("greek_iso_ir_126_different_name_is_a_mismatch", "ISO_IR 126", "ΝΙΚΟΛΑΟΥ^ΓΙΩΡΓΟΣ",
     register("Παπαδόπουλος", "Γιώργος"), [("family_name", "ΝΙΚΟΛΑΟΥ", "Παπαδόπουλος")]),
    ("cyrillic_iso_ir_144_decodes_and_matches", "ISO_IR 144", "Иванова^Анна", register("ИВАНОВА", "АННА"), []),
    ("cyrillic_iso_ir_144_different_name_is_a_mismatch", "ISO_IR 144", "Петрова^Анна",
     register("Иванова", "Анна"), [("family_name", "Петрова", "Иванова")]),
    ("utf8_iso_ir_192_decodes_and_matches", "ISO_IR 192", "Müller^Jürgen", register("MULLER", "Jurgen"), []),
    ("japanese_iso_2022_ir_87_matches_latin_register", ["", "ISO 2022 IR 87"], JAPANESE,
     register("YAMADA", "Tarou"), []),
    ("japanese_iso_2022_ir_87_matches_kanji_register", ["", "ISO 2022 IR 87"], JAPANESE,
     register("山田", "太郎"), []),
    ("latin1_bytes_labelled_utf8_is_a_mismatch", "ISO_IR 192", b"M\xfcller^Hans",
     register("Müller", "Hans"), [("family_name", "M\ufffdller^Hans", "Müller")]),
    ("undecodable_iso_2022_ir_87_is_a_mismatch", ["", "ISO 2022 IR 87"], b"Yamada^Tarou=\x1b$B\xff\xff\x1b(B",
     register("YAMADA", "Tarou"), None),
]


@pytest.mark.parametrize(("charset", "name", "reg", "expected"), [w[1:] for w in WIRE], ids=[w[0] for w in WIRE])
def test_names_decoded_by_the_gateway_compare_with_the_register(tmp_path, charset, name, reg, expected) -> None:
    info = _as_the_gateway_reads(_file_in(tmp_path, charset, name))
    if isinstance(name, str):
        assert info.patient_name == name  # decoded with the data set's character set, all groups kept
    found = compare_with_register(info, reg)
    if expected is None:  # how pydicom shows the undecoded rest may vary: only that it stops
        assert [f for f, _s, _r in found] == ["family_name"] and "\ufffd" in found[0][1]
    else:
        assert found == expected


# -- end to end: the engine stops a Greek mismatch and delivers a Greek match ---------------------


@pytest.mark.parametrize(
    ("sent_family", "delivered"),
    [("ΝΙΚΟΛΑΟΥ", False), ("ΠΑΠΑΔΟΠΟΥΛΟΣ", True)],
    ids=["greek_name_mismatch_stops_the_import", "greek_name_match_delivers_the_import"],
)
def test_greek_names_through_the_engine(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, gateway, tmp_path, clean_queues,
    sent_family, delivered,
) -> None:
    login_as("requester")
    req = _request(client, "/requests/new/import", valid_import())
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    patient = db.session.scalar(sa.select(Patient).where(Patient.s_number == "S1234567"))
    patient.family_name, patient.given_name = "Παπαδόπουλος", "Γιώργος"  # the register in Greek
    db.session.commit()
    files = make_study(tmp_path / "ath", patient_id="S1234567", patient_name=f"{sent_family}^ΓΙΩΡΓΟΣ",
                       birth_date="19480314", study_date="20260901", n_series=1, n_per_series=2,
                       extra={"SpecificCharacterSet": "ISO_IR 126"})
    assert run_storescu(service.our_node(), files).returncode == 0
    db.session.expire_all()
    study = db.session.scalar(sa.select(InboundStudy))
    assert study.patient_name == f"{sent_family}^ΓΙΩΡΓΟΣ"  # recorded decoded, as sent
    analyst = _login(app, make_user, "analyst")
    token = csrf_token(analyst, f"/requests/{req.call_ref}")
    analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token})
    run_workers()
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer))
    if delivered:
        assert transfer.state == TransferState.DELIVERED.value, transfer.last_error
        assert len(orthanc.sop_uids(_study_uid(files[0]))) == 2
    else:
        assert transfer.state == TransferState.WAITING_CONFIRMATION.value
        assert "family_name: sender 'ΝΙΚΟΛΑΟΥ', register 'Παπαδόπουλος'" in transfer.last_error
        assert orthanc.sop_uids(_study_uid(files[0])) == set()  # nothing stored or rewritten
