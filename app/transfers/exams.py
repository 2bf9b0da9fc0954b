"""Which of a request's exam lines a study is: by date, and by description and modality.

Used twice: a PACS search ticks the studies that match an exam line in advance (AM
radiology confirms instead of hunting, issue 13.10), and an import's RIS entry takes its
exam code from the matching line when the sender's study carries none (issue 13.9).

A study fits a line when it was acquired on the line's date, or when its description
names the same body part and the dates are at most `NEAR_DAYS` apart (or the study has
no date): requesters type the date from a letter or from memory. A study whose modality
differs from the one the line names (CT against MRI) never fits. Among the lines that
fit, the best is the one with the same date, then the same body part, then the same
modality, then the nearest date; two lines that fit equally well are both kept, so the
caller can see the choice is not the desk's to make. Pure logic: no database, no Flask.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from app.dicom.fixup import parse_date

NEAR_DAYS = 7  # a study this many days from a line's date still fits it, when the body part agrees

# Words for a modality, in descriptions and DICOM's own codes, to one name each.
_MODALITY_WORDS = {
    "MR": "MR", "MRI": "MR", "MRA": "MR", "MRCP": "MR", "MAGNETIC": "MR",
    "CT": "CT", "CTA": "CT", "CAT": "CT", "CTPA": "CT",
    "XR": "XR", "XRAY": "XR", "CR": "XR", "DX": "XR", "DR": "XR", "RADIOGRAPH": "XR", "RADIOGRAPHS": "XR",
    "US": "US", "USS": "US", "ULTRASOUND": "US", "SONOGRAPHY": "US",
    "NM": "NM", "NUCLEAR": "NM", "PET": "PT", "PT": "PT",
    "MG": "MG", "MAMMO": "MG", "MAMMOGRAM": "MG", "MAMMOGRAPHY": "MG",
    "RF": "RF", "FLUORO": "RF", "FLUOROSCOPY": "RF",
}
# Names people and senders use for one body part.
_SAME_PART = {
    "BRAIN": "HEAD", "SKULL": "HEAD", "CRANIAL": "HEAD", "IAM": "HEAD", "IAMS": "HEAD",
    "THORAX": "CHEST", "THORACIC": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST", "CXR": "CHEST",
    "ABDO": "ABDOMEN", "ABDOMINAL": "ABDOMEN", "ABD": "ABDOMEN",
    "PELVIC": "PELVIS",
    "LUMBAR": "LSPINE", "LSPINE": "LSPINE", "CERVICAL": "CSPINE", "CSPINE": "CSPINE",
    "KNEES": "KNEE", "HIPS": "HIP", "SHOULDERS": "SHOULDER", "ANKLES": "ANKLE", "WRISTS": "WRIST",
}
# Words that say nothing about which examination it is.
_NOISE = frozenset({
    "AND", "OF", "THE", "WITH", "WITHOUT", "W", "WO", "NO", "PLUS", "FOR", "ON", "IN", "TO",
    "CONTRAST", "NON", "NC", "IV", "PRE", "POST", "ROUTINE", "PROTOCOL", "SCAN", "SCANS", "STUDY", "STUDIES",
    "IMAGING", "IMAGES", "EXAM", "EXAMINATION", "SERIES", "LEFT", "RIGHT", "LT", "RT", "BILATERAL", "BOTH",
    "SPIRE", "NUFFIELD", "BMI", "PRIVATE", "HOSPITAL", "SYNTHETIC", "AX", "COR", "SAG",
})
_WORD = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True)
class Line:
    """A request's exam line as matching needs it."""

    exam_date: date | None
    description: str = ""
    exam_code: str = ""


@dataclass(frozen=True)
class Study:
    """A study (on a PACS, on the gateway) as matching needs it."""

    study_date: date | None
    description: str = ""
    modalities: tuple[str, ...] = ()

    @classmethod
    def of(cls, study_date: object, description: str, modalities: Iterable[str] | str) -> Study:
        """From DICOM-ish values: a DA or ISO date, a description, modalities as codes or "CT,SR"."""
        if isinstance(modalities, str):
            modalities = modalities.split(",")
        return cls(parse_date(study_date), description or "", tuple(m.strip() for m in modalities if m.strip()))


@dataclass(frozen=True)
class Fit:
    """How well a study fits the best of the lines: which lines (indexes, several when
    equally good) and why, in words for the page."""

    lines: tuple[int, ...]
    same_date: bool
    same_part: bool
    days_apart: int | None

    @property
    def reason(self) -> str:
        if self.same_date:
            return "same date and body part" if self.same_part else "same date"
        if self.days_apart is None:
            return "same body part (the study has no date)"
        return f"same body part, {self.days_apart} day{'s' if self.days_apart != 1 else ''} apart"

    def code(self, lines: Sequence[Line]) -> tuple[str, str]:
        """(the exam code of the line that fits, "") — or ("", why there is none)."""
        codes = sorted({lines[i].exam_code.strip().upper() for i in self.lines if lines[i].exam_code.strip()})
        if len(codes) == 1 and all(lines[i].exam_code.strip() for i in self.lines):
            return codes[0], ""
        if len(self.lines) > 1:
            return "", "exam lines " + ", ".join(_line_words(lines[i]) for i in self.lines) + " fit it equally well"
        return "", f"the exam line it matches ({_line_words(lines[self.lines[0]])}) has no exam code"


def _line_words(line: Line) -> str:
    day = line.exam_date.strftime("%d/%m/%Y") if line.exam_date else "no date"
    return f"{day} “{line.description}”" if line.description else day


def _words(text: str) -> list[str]:
    text = (text or "").upper().replace("X-RAY", "XRAY").replace("X RAY", "XRAY")
    text = re.sub(r"\b([LC])[\s-]SPINE\b", r"\1SPINE", text)
    return _WORD.findall(text)


def modalities_named(text: str) -> frozenset[str]:
    """The modalities a description names ("MRI head" -> {"MR"})."""
    return frozenset(_MODALITY_WORDS[w] for w in _words(text) if w in _MODALITY_WORDS)


def body_parts(text: str) -> frozenset[str]:
    """The words of a description that say what was imaged ("CT thorax" -> {"CHEST"})."""
    parts = set()
    for word in _words(text):
        if word in _MODALITY_WORDS or word in _NOISE or word.isdigit() or len(word) < 2:
            continue
        parts.add(_SAME_PART.get(word, word))
    if {"LSPINE", "CSPINE"} & parts:
        parts.discard("SPINE")
    return frozenset(parts)


def _study_modalities(study: Study) -> frozenset[str]:
    named = {_MODALITY_WORDS[m.upper()] for m in study.modalities if m.upper() in _MODALITY_WORDS}
    return frozenset(named) | modalities_named(study.description)


def _rank(study: Study, line: Line) -> tuple[bool, bool, bool, int] | None:
    """(same date, same body part, same modality, -days apart) when the study fits the line."""
    theirs, ours = _study_modalities(study), modalities_named(line.description)
    if theirs and ours and not theirs & ours:
        return None
    days = abs((study.study_date - line.exam_date).days) if study.study_date and line.exam_date else None
    same_date = days == 0
    same_part = bool(body_parts(study.description) & body_parts(line.description))
    if not same_date and not (same_part and (days is None or days <= NEAR_DAYS)):
        return None
    return same_date, same_part, bool(theirs & ours), -(days if days is not None else NEAR_DAYS + 1)


def best_fit(study: Study, lines: Sequence[Line]) -> Fit | None:
    """The line(s) `study` fits best, or None when it fits none."""
    ranked = [(rank, i) for i, line in enumerate(lines) if (rank := _rank(study, line)) is not None]
    if not ranked:
        return None
    top = max(rank for rank, _i in ranked)
    same_date, same_part, _modality, minus_days = top
    days = None if minus_days == -(NEAR_DAYS + 1) else -minus_days
    return Fit(lines=tuple(i for rank, i in ranked if rank == top), same_date=same_date, same_part=same_part,
               days_apart=days)


def fits(studies: Sequence[Study], lines: Sequence[Line]) -> list[Fit | None]:
    """`best_fit` for each study, in order."""
    return [best_fit(study, lines) for study in studies]


def lines_of(exams: Iterable[object]) -> list[Line]:
    """A request's ExamLine rows (anything with exam_date, description, exam_code) as Lines."""
    return [Line(getattr(e, "exam_date", None), getattr(e, "description", "") or "", getattr(e, "exam_code", "") or "")
            for e in exams]


# --- An imported study's exam code (guideline 2.3 f; issue 13.9) -------------------------------


@dataclass(frozen=True)
class SenderHeader:
    """What one instance of the sender's study says about the examination."""

    code: str = ""  # Procedure Code Sequence's first Code Value (else Requested Procedure Code Sequence's)
    meaning: str = ""
    acquired: date | None = None  # Acquisition, Series or Content Date, for a study without a Study Date


def read_sender_header(path: str) -> SenderHeader:
    """The exam code and acquisition date one instance of a study carries; empty when the
    file cannot be read (the RIS entry is then flagged, never lost)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    wanted = ["ProcedureCodeSequence", "RequestedProcedureCodeSequence", "AcquisitionDate", "SeriesDate",
              "ContentDate"]
    try:
        with open(path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=wanted)
        code = meaning = ""
        for keyword in ("ProcedureCodeSequence", "RequestedProcedureCodeSequence"):
            for item in ds.get(keyword, None) or []:
                code = str(item.get("CodeValue", "") or "").strip()
                meaning = str(item.get("CodeMeaning", "") or "").strip()
                if code:
                    break
            if code:
                break
        acquired = next((d for k in ("AcquisitionDate", "SeriesDate", "ContentDate")
                         if (d := parse_date(ds.get(k, ""))) is not None), None)
    except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError):
        return SenderHeader()
    return SenderHeader(code=code, meaning=meaning, acquired=acquired)


class CodeSource(enum.StrEnum):
    """Where a RIS entry's exam code came from (RisEntry.code_source)."""

    STUDY = "study"  # the sender's study: its Procedure Code Sequence
    EXAM_LINE = "exam line"  # the request's exam line the study matches
    NONE = ""  # neither: the entry is flagged (RisEntry.code_missing)


CODE_LENGTH = 20  # CRIS's exam codes (and RisEntry.exam_code) are at most this long


@dataclass(frozen=True)
class CodeChoice:
    """A RIS entry's exam code, where it came from ('study', 'exam line' or '') and why."""

    code: str
    source: CodeSource
    note: str

    @property
    def missing(self) -> bool:
        return not self.code


def choose_code(sender: SenderHeader, study: Study, lines: Sequence[Line]) -> CodeChoice:
    """The exam code for an imported study: the sender's own (guideline 2.3 f: "the exam
    code provided by the referring hospital"), else the request's exam line it matches,
    else none — flagged, with the reason, for the desk to enter on CRIS by hand."""
    own = sender.code.strip().upper()
    if own and len(own) <= CODE_LENGTH:
        words = f" “{sender.meaning}”" if sender.meaning else ""
        return CodeChoice(own, CodeSource.STUDY, f"From the sender's study (Procedure Code {own}{words}).")
    why_not_own = (f"the sender's procedure code “{own[:40]}” is longer than an exam code can be"
                   if own else "the sender's study carries no procedure code")
    fit = best_fit(study, lines)
    if fit is None:
        why = ("the request has no exam line" if not lines
               else "no exam line of the request matches it (date, body part, modality)")
        return _missing(why_not_own, why)
    code, why = fit.code(lines)
    if not code:
        return _missing(why_not_own, why)
    line = lines[fit.lines[0]]
    return CodeChoice(code, CodeSource.EXAM_LINE,
                      f"From the request's exam line {_line_words(line)} ({fit.reason}); {why_not_own}."[:300])


def _missing(why_not_own: str, why: str) -> CodeChoice:
    return CodeChoice("", CodeSource.NONE, f"No exam code: {why_not_own}, and {why}. Enter it on CRIS by hand."[:300])
