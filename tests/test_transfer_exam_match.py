"""Which of a request's exam lines a study is (app/transfers/exams.py, issue 13.9-10): by
date, body part and modality; and the RIS entry's exam code that follows from it — the
sender's own, else the matching line's, else none and flagged."""

from __future__ import annotations

from datetime import date

import pytest

from app.transfers.exams import (
    CodeSource,
    Line,
    SenderHeader,
    Study,
    best_fit,
    body_parts,
    choose_code,
    fits,
    lines_of,
    modalities_named,
    read_sender_header,
)

D = date(2025, 5, 12)
MRI_HEAD = Line(D, "MRI head", "MHEAD")
CT_CHEST = Line(D, "CT chest", "CCHES")


def study(day: str, description: str, *modalities: str) -> Study:
    return Study.of(day, description, modalities)


FITS = [
    # (id: the rule, the study, the lines, the line indexes it fits (None: none), its reason)
    ("same_date_and_body_part", study("20250512", "MR HEAD W/O CONTRAST", "MR"), [MRI_HEAD], (0,),
     "same date and body part"),
    ("same_date_alone_is_enough", study("20250512", "SYNTHETIC STUDY", "MR"), [MRI_HEAD], (0,), "same date"),
    ("same_body_part_a_day_apart", study("20250511", "MR HEAD", "MR"), [MRI_HEAD], (0,),
     "same body part, 1 day apart"),
    ("brain_is_the_head", study("20250509", "MRI BRAIN", "MR"), [MRI_HEAD], (0,), "same body part, 3 days apart"),
    ("thorax_is_the_chest", study("20250512", "CT THORAX", "CT"), [MRI_HEAD, CT_CHEST], (1,),
     "same date and body part"),
    ("the_body_part_chooses_between_lines_of_one_date", study("20250512", "CT CHEST ABDO", "CT"),
     [Line(D, "CT head"), CT_CHEST], (1,), "same date and body part"),
    ("the_modality_chooses_when_the_body_part_does_not", study("20250512", "", "CT", "SR"),
     [MRI_HEAD, Line(D, "CT head", "CHEAD")], (1,), "same date"),
    ("another_modality_never_fits", study("20250512", "CT HEAD", "CT"), [MRI_HEAD], None, ""),
    ("another_body_part_on_another_date_does_not_fit", study("20250511", "MR KNEE", "MR"), [MRI_HEAD], None, ""),
    ("same_body_part_too_far_apart_does_not_fit", study("20250501", "MR HEAD", "MR"), [MRI_HEAD], None, ""),
    ("a_study_without_a_date_fits_by_body_part", study("", "MR HEAD", "MR"), [MRI_HEAD], (0,),
     "same body part (the study has no date)"),
    ("a_study_without_a_date_or_body_part_fits_nothing", study("", "", "MR"), [MRI_HEAD], None, ""),
    ("two_equal_lines_are_both_kept", study("20250512", "CT HEAD", "CT"),
     [Line(D, "CT head", "CHEAD"), Line(D, "CT head and neck", "CHENE")], (0, 1), "same date and body part"),
    ("no_lines_no_fit", study("20250512", "MR HEAD", "MR"), [], None, ""),
    ("x_ray_spelt_any_way", study("20250512", "XR L-SPINE", "DX"), [Line(D, "X-ray lumbar spine")], (0,),
     "same date and body part"),
]


@pytest.mark.parametrize(("case", "found", "lines", "expected", "reason"), FITS, ids=[c[0] for c in FITS])
def test_which_line_a_study_fits(case, found, lines, expected, reason):
    fit = best_fit(found, lines)
    if expected is None:
        assert fit is None
    else:
        assert fit is not None and fit.lines == expected
        assert fit.reason == reason


def test_words_of_a_description():
    assert modalities_named("MRI head (Spire)") == {"MR"}
    assert modalities_named("X-ray left knee") == {"XR"}
    assert body_parts("MRI lumbar spine (Spire)") == {"LSPINE"}
    assert body_parts("CT chest abdomen pelvis with contrast") == {"CHEST", "ABDOMEN", "PELVIS"}
    assert body_parts("") == frozenset()


def test_fits_keeps_the_order_of_the_studies():
    found = [study("20250512", "XR CHEST", "CR"), study("20250511", "MR HEAD", "MR")]
    assert [f.lines if f else None for f in fits(found, [MRI_HEAD])] == [None, (0,)]


def test_exam_lines_are_read_from_rows():
    class Row:
        exam_date, description, exam_code = D, "MRI head", "MHEAD"

    assert lines_of([Row()]) == [MRI_HEAD]


# --- the RIS entry's exam code -----------------------------------------------------------------


def test_the_senders_own_code_comes_first():
    choice = choose_code(SenderHeader(code="nhead", meaning="MR Head"), study("20250512", "MR HEAD", "MR"),
                         [MRI_HEAD])
    assert (choice.code, choice.source, choice.missing) == ("NHEAD", CodeSource.STUDY, False)
    assert "Procedure Code NHEAD “MR Head”" in choice.note


def test_the_exam_lines_code_when_the_sender_gives_none():
    """The case in issue 13.9: the requester gave MHEAD, the study came a day off and without a code."""
    choice = choose_code(SenderHeader(), study("20250511", "MR HEAD", "MR"), [CT_CHEST, MRI_HEAD])
    assert (choice.code, choice.source, choice.missing) == ("MHEAD", CodeSource.EXAM_LINE, False)
    assert "12/05/2025 “MRI head” (same body part, 1 day apart)" in choice.note
    assert "carries no procedure code" in choice.note


def test_a_code_too_long_for_cris_gives_way_to_the_exam_line():
    choice = choose_code(SenderHeader(code="X" * 21), study("20250512", "MR HEAD", "MR"), [MRI_HEAD])
    assert (choice.code, choice.source) == ("MHEAD", CodeSource.EXAM_LINE)
    assert "longer than an exam code can be" in choice.note


@pytest.mark.parametrize(("case", "found", "lines", "why"), [
    ("no_line_matches", study("20250301", "XR CHEST", "CR"), [MRI_HEAD], "no exam line of the request matches it"),
    ("no_lines_at_all", study("20250512", "MR HEAD", "MR"), [], "the request has no exam line"),
    ("the_matching_line_has_no_code", study("20250512", "MR HEAD", "MR"), [Line(D, "MRI head")],
     "the exam line it matches (12/05/2025 “MRI head”) has no exam code"),
    ("two_lines_fit_with_different_codes", study("20250512", "CT HEAD", "CT"),
     [Line(D, "CT head", "CHEAD"), Line(D, "CT head and neck", "CHENE")], "fit it equally well"),
], ids=lambda v: v if isinstance(v, str) and v.islower() and " " not in v else "")
def test_flagged_when_neither_gives_a_code(case, found, lines, why):
    choice = choose_code(SenderHeader(), found, lines)
    assert (choice.code, choice.source, choice.missing) == ("", CodeSource.NONE, True)
    assert why in choice.note and "Enter it on CRIS by hand" in choice.note


def test_the_senders_code_and_acquisition_date_are_read_from_an_image(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from app.dicom.synth import make_study

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "MHEAD", "99UHL", "MRI Head"
    (with_code,) = make_study(tmp_path / "a", patient_id="P1", patient_name="SMITH^MARGARET", birth_date="19480314",
                              study_date="", modality="MR", rows=8, cols=8,
                              extra={"ProcedureCodeSequence": Sequence([code]), "AcquisitionDate": "20250511"})
    (without,) = make_study(tmp_path / "b", patient_id="P1", patient_name="SMITH^MARGARET", birth_date="19480314",
                            study_date="20250512", rows=8, cols=8)
    assert read_sender_header(str(with_code)) == SenderHeader("MHEAD", "MRI Head", date(2025, 5, 11))
    assert read_sender_header(str(without)).code == ""
    assert read_sender_header(str(tmp_path / "missing.dcm")) == SenderHeader()
