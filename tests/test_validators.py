"""Field rules, table-driven; each test id names the rule (DESIGN "Validation")."""

from __future__ import annotations

from datetime import date

import pytest

from app.requests import validators as v


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("9990000018", "9990000018", id="nhs_ten_digits_valid"),
        pytest.param("999 000 0018", "9990000018", id="nhs_spaces_accepted"),
        pytest.param("999-000-0018", "9990000018", id="nhs_dashes_accepted"),
        pytest.param(" 999 000-0018 ", "9990000018", id="nhs_mixed_separators_and_padding_accepted"),
        pytest.param("4010232137", "4010232137", id="nhs_real_format_valid"),
    ],
)
def test_nhs_number_accepted(raw, expected):
    assert v.clean_nhs_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("9990000019", "check digit is wrong", id="nhs_wrong_check_digit"),
        pytest.param("999000001", "has 10 digits; this has 9", id="nhs_nine_digits"),
        pytest.param("99900000180", "has 10 digits; this has 11", id="nhs_eleven_digits"),
        # 999 000 000x: the weighted sum leaves check digit 10, which no NHS number has.
        pytest.param("9990000000", "check digit is wrong", id="nhs_check_digit_10_is_invalid"),
        pytest.param("999000000X", "only the digits 0-9", id="nhs_letters_refused"),
        pytest.param("999.000.0018", "only the digits 0-9", id="nhs_dots_refused"),
        # issue 11.11: valid by modulus 11, never issued.
        pytest.param("0000000000", "never issued", id="nhs_all_zeros_refused"),
        pytest.param("999 999 9999", "never issued", id="nhs_all_nines_refused"),
        # Full-width digits were silently converted; Arabic-Indic ones got a check-digit message.
        pytest.param("\uff19\uff19\uff19\uff10\uff10\uff10\uff10\uff10\uff11\uff18",
                     "only the digits 0-9; spaces and dashes are allowed", id="nhs_full_width_refused"),
        pytest.param("\u0669\u0669\u0669\u0660\u0660\u0660\u0660\u0660\u0661\u0668",
                     "only the digits 0-9; spaces and dashes are allowed", id="nhs_arabic_indic_refused"),
        pytest.param("", "10 digits", id="nhs_empty"),
    ],
)
def test_nhs_number_refused(raw, message):
    with pytest.raises(v.FieldError, match=message):
        v.clean_nhs_number(raw)


def test_check_digit_10_case_really_computes_10():
    weights = range(10, 1, -1)
    remainder = sum(int(d) * w for d, w in zip("999000000", weights, strict=True)) % 11
    assert 11 - remainder == 10


def test_nhs_number_shown_in_nhs_format():
    assert v.format_nhs_number("9990000018") == "999 000 0018"
    assert v.format_nhs_number("") == ""


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        pytest.param("S1234567", "S1234567", id="s_number_valid"),
        pytest.param("s1234567", "S1234567", id="s_number_lowercase_normalised"),
        pytest.param(" S123 4567 ", "S1234567", id="s_number_spaces_removed"),
        pytest.param("S123456", None, id="s_number_six_digits"),
        pytest.param("S12345678", None, id="s_number_eight_digits"),
        pytest.param("1234567", None, id="s_number_without_S"),
        pytest.param("T1234567", None, id="s_number_wrong_letter"),
        pytest.param("S12345A7", None, id="s_number_letter_inside"),
        pytest.param("S\uff11\uff12\uff13\uff14\uff15\uff16\uff17", None, id="s_number_full_width_refused"),
        pytest.param("S\u0661\u0662\u0663\u0664\u0665\u0666\u0667", None, id="s_number_arabic_indic_refused"),
    ],
)
def test_s_number(raw, ok):
    if ok:
        assert v.clean_s_number(raw) == ok
    else:
        with pytest.raises(v.FieldError, match=r"letter S followed by 7 digits \(0-9 only"):
            v.clean_s_number(raw)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("All imaging", id="all_imaging_refused"),
        pytest.param("all studies", id="all_studies_refused"),
        pytest.param("ALL SCANS from 2024", id="all_scans_refused"),
        pytest.param("Any images you hold", id="any_images_refused"),
        pytest.param("all of the studies", id="all_of_the_studies_refused"),
        # issue 11.12: a quantity, not an examination, however it is put.
        *(pytest.param(text, id=f"refused_{text}") for text in (
            "all", "everything", "Everything you have", "all other imaging", "all scans", "every study",
            "any images", "all previous imaging", "any imaging available", "All prior studies please",
            "anything relevant", "the entire record", "ALL", "all imaging 2020-2024",
        )),
    ],
)
def test_all_imaging_refused(text):
    with pytest.raises(v.FieldError, match="all imaging"):
        v.check_exam_description(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("CT chest", id="named_exam_ok"),
        pytest.param("MRI lumbar spine – all sequences", id="all_sequences_of_one_exam_ok"),
        pytest.param("Small bowel follow-through", id="word_all_inside_another_word_ok"),
        *(pytest.param(text, id=f"accepted_{text}") for text in (
            "CT head", "MRI lumbar spine", "XR chest", "US abdomen 12/03/2025", "CT chest abdomen pelvis",
            "X-ray left wrist", "MRI brain with all sequences", "Mammogram both breasts", "PET-CT",
            "Ultrasound kidneys", "Tall stature XR hand (bone age)",
        )),
    ],
)
def test_named_examinations_accepted(text):
    assert v.check_exam_description(text) == text


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        pytest.param("0116 258 0000", True, id="phone_landline"),
        pytest.param("x18000", True, id="phone_extension"),
        pytest.param("+44 (0)116 258 0000", True, id="phone_international"),
        pytest.param("call me", False, id="phone_words_refused"),
        pytest.param("12", False, id="phone_too_short"),
    ],
)
def test_phone(raw, ok):
    if ok:
        assert v.clean_phone(raw) == raw
    else:
        with pytest.raises(v.FieldError):
            v.clean_phone(raw)


def test_dates_in_past_and_future():
    today = date(2026, 11, 28)
    with pytest.raises(v.FieldError, match="cannot be in the past"):
        v.check_not_past(date(2026, 11, 27), today, "date required by")
    assert v.check_not_past(today, today, "date required by") == today
    with pytest.raises(v.FieldError, match="cannot be in the future"):
        v.check_not_future(date(2026, 11, 29), today, "examination date")
