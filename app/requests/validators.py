"""Field rules from the guideline, as pure functions: each returns the cleaned value or
raises `FieldError` with the sentence to show beside the field.
"""

from __future__ import annotations

import re
from datetime import date

from stdnum import exceptions as stdnum_errors
from stdnum.gb import nhs


class FieldError(ValueError):
    """The value is wrong; the message says how, in words a requester understands."""


_S_NUMBER = re.compile(r"S[0-9]{7}")  # ASCII digits only: \d would take full-width and Arabic-Indic ones
_SEPARATORS = re.compile(r"[\s-]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")
# Pass the modulus-11 check but are never issued (issue 11.11).
_NEVER_ISSUED = {"0000000000", "9999999999"}
# Appendix 2 note: "Stating 'All imaging' will not be accepted."
_ALL_IMAGING = re.compile(
    r"\b(all|any|every)\s+(of\s+the\s+)?(imaging|images?|stud(y|ies)|scans?|exams?|examinations?|x-?rays?)\b",
    re.IGNORECASE,
)
# A line that says only how much ("everything", "all other imaging", "every study") names
# no examination (issue 11.12): a quantity word with no modality or body part in the line.
_QUANTITY_WORDS = frozenset({"all", "any", "every", "everything", "anything", "whatever", "entire", "complete"})
_EXAM_WORDS = frozenset({
    # modalities and examination names
    "ct", "cta", "ctpa", "mri", "mr", "mra", "xr", "x-ray", "xray", "radiograph", "radiographs", "us", "uss",
    "ultrasound", "doppler", "echo", "nm", "pet", "pet-ct", "spect", "dexa", "dxa", "mammogram", "mammography",
    "mammo", "fluoroscopy", "angiogram", "angiography", "venogram", "barium", "swallow", "enema", "opg", "ivu",
    "myelogram", "arthrogram", "scintigraphy", "bone", "tomosynthesis", "sequences",
    # body parts
    "head", "brain", "skull", "face", "facial", "orbits", "sinuses", "neck", "cervical", "thoracic", "lumbar",
    "sacrum", "spine", "whole-spine", "chest", "thorax", "lung", "lungs", "cardiac", "heart", "abdomen",
    "abdominal", "pelvis", "pelvic", "hip", "hips", "knee", "knees", "ankle", "foot", "feet", "shoulder",
    "elbow", "wrist", "hand", "hands", "femur", "tibia", "humerus", "liver", "kidney", "kidneys", "renal",
    "bladder", "prostate", "breast", "breasts", "bowel", "colon", "aorta", "carotid", "carotids", "thyroid",
})
_WORDS = re.compile(r"[a-z]+(?:-[a-z]+)*")
_PHONE = re.compile(r"[0-9 +()x.-]{3,25}", re.IGNORECASE)


def clean_nhs_number(raw: str) -> str:
    """10 digits with a valid modulus-11 check digit; spaces and dashes allowed."""
    value = _SEPARATORS.sub("", raw or "")
    if not value:
        raise FieldError("Enter the NHS number: 10 digits.")
    if not _ASCII_DIGITS.fullmatch(value):
        # str.isdigit would take a full-width or Arabic-Indic digit and int() convert it.
        raise FieldError("An NHS number has only the digits 0-9; spaces and dashes are allowed, nothing else.")
    if len(value) != 10:
        raise FieldError(f"An NHS number has 10 digits; this has {len(value)}.")
    if value in _NEVER_ISSUED:
        raise FieldError("This is not an NHS number: it is never issued. Check it against the patient's record.")
    try:
        return nhs.validate(value)
    except stdnum_errors.ValidationError as exc:
        raise FieldError(
            "This is not a valid NHS number: its check digit is wrong. Check it against "
            "the patient's record."
        ) from exc


def format_nhs_number(value: str | None) -> str:
    """`XXX XXX XXXX`, as the NHS prints it; anything else is shown as it is."""
    if value and len(value) == 10 and value.isdigit():
        return f"{value[:3]} {value[3:6]} {value[6:]}"
    return value or ""


def clean_s_number(raw: str) -> str:
    """The local hospital number: `S` and 7 digits (glossary "S Number")."""
    value = _SEPARATORS.sub("", raw or "").upper()
    if not _S_NUMBER.fullmatch(value):
        raise FieldError("An S number is the letter S followed by 7 digits (0-9 only; spaces and dashes "
                         "are allowed), e.g. S1234567.")
    return value


def check_exam_description(text: str) -> str:
    """Each examination must be named; "all imaging" is refused (Appendix 2 note)."""
    value = (text or "").strip()
    words = set(_WORDS.findall(value.lower()))
    only_a_quantity = bool(words & _QUANTITY_WORDS) and not words & _EXAM_WORDS
    if _ALL_IMAGING.search(value) or only_a_quantity:
        raise FieldError(
            "Name each examination and its date; requests for 'all imaging' or "
            "'all studies' are not accepted."
        )
    return value


def check_not_future(value: date, today: date, what: str) -> date:
    if value > today:
        raise FieldError(f"The {what} cannot be in the future.")
    return value


def check_not_past(value: date, today: date, what: str) -> date:
    if value < today:
        raise FieldError(f"The {what} cannot be in the past.")
    return value


def clean_phone(raw: str) -> str:
    value = (raw or "").strip()
    digits = sum(ch.isdigit() for ch in value)
    if not _PHONE.fullmatch(value) or digits < 3:
        raise FieldError("Enter a telephone number or extension, e.g. 0116 258 0000 or x18000.")
    return value
