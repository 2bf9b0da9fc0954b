"""Header fix-up of imported instances, and the check against the patient register.

`fix_up` makes an inbound instance ours: Patient ID becomes the S number (issuer: the
hospital), and the sender's Patient ID with its issuer is kept as an item of Other
Patient IDs Sequence (0010,1002). Nothing else changes. It streams: the structure walk of
the gateway (app.dicom.scp) finds the patient group (0010); only that group is decoded and
encoded again, in the file's own transfer syntax and character set — unchanged elements
written back from their raw bytes — and everything before and after it is copied byte
for byte, never decoded or held in memory (1.5 ms an instance against 3 for parsing and
writing the whole header with pydicom, which remains the way for deflated files).

`compare_with_register` lists where the sender's demographics differ from the register,
for the analyst to judge; it changes nothing.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from stdnum.gb import nhs

# The elements fix_up may change. Anything else differing afterwards is a bug.
CHANGED_TAGS = frozenset({
    0x00100020,  # Patient ID
    0x00100021,  # Issuer of Patient ID
    0x00100024,  # Issuer of Patient ID Qualifiers Sequence (moves with the sender's ID)
    0x00101002,  # Other Patient IDs Sequence
})

_COPY_CHUNK = 1024 * 1024


def _same(a: object, b: object) -> bool:
    return str(a or "").strip() == str(b or "").strip()


def fix_up(
    src_path: Path | str,
    dst_path: Path | str,
    *,
    s_number: str,
    issuer_of_local_id: str = "UHL",
) -> bool:
    """Write `src_path` to `dst_path` with Patient ID := `s_number`; return True if changed.

    The sender's Patient ID, Issuer of Patient ID and (if any) Issuer of Patient ID
    Qualifiers Sequence go into a new item of Other Patient IDs Sequence (existing items
    are kept; Type of Patient ID "TEXT", PS3.3 C.7.1.1). Issuer of Patient ID becomes
    `issuer_of_local_id`. Idempotent: a file already carrying the S number under that
    issuer is copied unchanged, and an identical item is never added twice.
    `dst_path` is written atomically (temporary file, then rename); it may equal src_path.
    Retired group-length elements (gggg,0000) outside the file meta are not carried over
    (PS3.5 7.2; pydicom never writes them).
    """
    s_number = s_number.strip()
    if not s_number or len(s_number) > 64:
        raise ValueError("an S number is needed (at most 64 characters)")
    src, dst = Path(src_path), Path(dst_path)
    temp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        with src.open("rb") as fp:
            spliced = _splice(fp, s_number, issuer_of_local_id)
            if spliced is not None:
                start, segment, end = spliced
                if segment is None:  # already ours
                    if src == dst:
                        return False
                    fp.seek(0)
                    with temp.open("wb") as out:
                        shutil.copyfileobj(fp, out, _COPY_CHUNK)
                    os.replace(temp, dst)
                    return False
                with temp.open("wb") as out:
                    fp.seek(0)
                    out.write(fp.read(start))
                    out.write(segment)
                    fp.seek(end)
                    shutil.copyfileobj(fp, out, _COPY_CHUNK)
                os.replace(temp, dst)
                return True
        with src.open("rb") as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            tail_offset = fp.tell()  # pydicom rewinds to the start of Pixel Data (or EOF)
            syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta else None
            if _same(ds.get("PatientID"), s_number) and _same(ds.get("IssuerOfPatientID"), issuer_of_local_id):
                if src != dst:
                    fp.seek(0)
                    with temp.open("wb") as out:
                        shutil.copyfileobj(fp, out, _COPY_CHUNK)
                    os.replace(temp, dst)
                return False
            if syntax is not None and syntax.is_deflated:
                # The whole data set is one deflate stream: no raw tail to copy.
                fp.seek(0)
                ds = dcmread(fp)
                _apply(ds, s_number, issuer_of_local_id)
                ds.save_as(temp)
            else:
                _apply(ds, s_number, issuer_of_local_id)
                with temp.open("wb") as out:
                    ds.save_as(out)
                    fp.seek(tail_offset)
                    shutil.copyfileobj(fp, out, _COPY_CHUNK)
        os.replace(temp, dst)
        return True
    finally:
        temp.unlink(missing_ok=True)


_PATIENT_GROUP = (0x00100000, 0x0010FFFF)  # every element fix_up changes is in group 0010


def _splice(fp: BinaryIO, s_number: str, issuer: str) -> tuple[int, bytes | None, int] | None:
    """The quick way: (start, new bytes, end) to put in place of the file's group 0010
    (the patient module: every element fix_up changes, PS3.6), with everything before and
    after copied byte for byte; (start, None, end) when the file is already ours. None
    when the file is not one for it (deflated, or not a well-formed Part 10 file): then
    the whole header is parsed and written by pydicom, as before.

    Only the patient group is decoded and encoded again (by pydicom, in the file's syntax
    and character set); a retired (0010,0000) group length is dropped, as pydicom drops
    every group length it writes (PS3.5 7.2)."""
    from app.dicom.scp import Malformed, check_structure
    from app.dicom.store_link import read_part10

    try:
        part = read_part10(Path(fp.name))
    except (ValueError, OSError, AttributeError):
        return None
    syntax = UID(part.syntax)
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        return None
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    top: dict[int, tuple[int, int, bytes | None]] = {}
    try:
        check_structure(fp, part.data_offset, part.size, implicit=implicit, little=little, top=top)
    except Malformed:
        return None
    # Where each top-level element starts: its value's offset less its header (8 bytes, or
    # 12 for an explicit VR with a 4-byte length); the next one's start is its end.
    starts = sorted((value - (12 if vr in _LONG_VRS else 8), tag) for tag, (value, _length, vr) in top.items())
    inside = [(offset, tag) for offset, tag in starts if _PATIENT_GROUP[0] <= tag <= _PATIENT_GROUP[1]]
    after = [offset for offset, tag in starts if tag > _PATIENT_GROUP[1]]
    end = after[0] if after else part.size
    start = inside[0][0] if inside else end
    encodings: str | list[str] = "iso8859"
    if 0x00080005 in top:
        value, length, _vr = top[0x00080005]
        fp.seek(value)
        terms = [t.strip() for t in fp.read(length).decode("ascii", "replace").split("\\")]
        encodings = convert_encodings(terms)
    fp.seek(start)
    segment = fp.read(end - start)
    group = read_dataset(io.BytesIO(segment), implicit, little, parent_encoding=encodings)
    if _same(group.get("PatientID"), s_number) and _same(group.get("IssuerOfPatientID"), issuer):
        return start, None, end
    _apply(group, s_number, issuer)
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit, little
    write_dataset(out, group, parent_encoding=encodings)
    return start, out.getvalue(), end


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _apply(ds: Dataset, s_number: str, issuer: str) -> None:
    sender_id = str(ds.get("PatientID", "") or "")
    sender_issuer = str(ds.get("IssuerOfPatientID", "") or "")
    if sender_id.strip() and not _same(sender_id, s_number):
        items = ds.OtherPatientIDsSequence if "OtherPatientIDsSequence" in ds else Sequence([])
        known = any(
            _same(item.get("PatientID"), sender_id) and _same(item.get("IssuerOfPatientID"), sender_issuer)
            for item in items
        )
        if not known:
            item = Dataset()
            item.PatientID = sender_id
            if sender_issuer:
                item.IssuerOfPatientID = sender_issuer
            if "IssuerOfPatientIDQualifiersSequence" in ds:
                item.IssuerOfPatientIDQualifiersSequence = ds.IssuerOfPatientIDQualifiersSequence
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = items
        if "IssuerOfPatientIDQualifiersSequence" in ds:
            del ds.IssuerOfPatientIDQualifiersSequence  # it described the sender's issuer
    ds.PatientID = s_number
    ds.IssuerOfPatientID = issuer


# -- register comparison --------------------------------------------------------------------


def _get(meta: Any, key: str) -> Any:
    if isinstance(meta, Mapping):
        return meta.get(key)
    return getattr(meta, key, None)


# Marks removed for comparison: the combining diacritics that NFKD splits off accented
# Latin, Greek and Cyrillic letters (ü, é, ά, ё, й). Marks of other blocks stay: in kana
# (the voicing marks of だ, ぱ), Indic scripts and Thai they spell a different sound, so
# dropping them would make different names equal — a false match is the one outcome this
# check must not produce; a spurious stop only costs the analyst a look.
_ACCENT_BLOCKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
# Latin letters whose stroke NFKD does not split off; folded like the accents above.
_STROKES = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe"})
# Code points that mean the sender's bytes were not decoded: pydicom's replacement character,
# and controls (an ISO 2022 escape left behind), surrogates, private use, unassigned.
_UNREADABLE_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn"})


def _is_accent(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _ACCENT_BLOCKS)


def _kana(ch: str) -> str:
    """Katakana as hiragana (ダ -> だ): one syllable, two ways of writing it, like case."""
    return chr(ord(ch) - 0x60) if "\u30a1" <= ch <= "\u30f6" else ch


def _name_key(value: str) -> str:
    """A name reduced for comparison only, in any script: compatibility decomposition
    (NFKD), case folding (Greek final sigma too), accents removed, then letters and the
    marks that spell them; spaces, hyphens, apostrophes, digits and punctuation dropped.
    'Müller' and 'MULLER' give one key, 'Mller' another; 'Παπαδόπουλος' and
    'ΠΑΠΑΔΟΠΟΥΛΟΣ' one key. Never shown or stored."""
    # Accents go before case folding too: folded, a Greek ypogegrammeni would become a letter.
    text = "".join(ch for ch in unicodedata.normalize("NFKD", value) if not _is_accent(ch))
    text = unicodedata.normalize("NFKD", text.casefold()).translate(_STROKES)
    return "".join(_kana(ch) for ch in text if _spells(ch))


def _spells(ch: str) -> bool:
    """A letter of any script, or a mark that is part of its spelling (not an accent)."""
    return (ch.isalpha() or unicodedata.category(ch) in ("Mn", "Mc")) and not _is_accent(ch)


def _readable(value: str) -> bool:
    """False if the text shows signs of bytes that were not decoded (see above)."""
    return not any(ch == "\ufffd" or unicodedata.category(ch) in _UNREADABLE_CATEGORIES for ch in value)


def _shown(value: str) -> str:
    """A sender's value as the analyst sees it: undecoded or control characters as '\ufffd'
    (no escapes or newlines reach the page or a log line)."""
    return "".join("\ufffd" if not _readable(ch) else ch for ch in value)


def _first_name(value: str) -> str:
    parts = value.replace("^", " ").split()
    return parts[0] if parts else ""


def _same_name(sender: list[str], register: str) -> bool:
    """True if the register's name equals one of the sender's spellings of it.

    A name that cannot be compared — no letter left after reduction on either side (the
    sender sent nothing, or '?' for what it could not encode) — is never a match: the
    analyst must look, since a silent match would defeat the check.
    """
    wanted = _name_key(register)
    if not any(ch.isalpha() for ch in wanted) or not all(map(_readable, [register, *sender])):
        return False
    return any(_name_key(value) == wanted for value in sender)


def parse_date(value: object) -> date | None:
    """A DICOM DA (YYYYMMDD), ISO date or date object as a date; None if it is none."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value or "").strip().replace("-", "")
    try:
        return datetime.strptime(text, "%Y%m%d").date() if text else None
    except ValueError:
        return None


def sender_nhs_number(meta: Any) -> str:
    """The NHS number the sender gave, if any: the Patient ID or an Other Patient ID whose
    issuer names the NHS, or a Patient ID that is itself a valid NHS number."""
    candidates = [(str(_get(meta, "patient_id") or ""), str(_get(meta, "issuer_of_patient_id") or ""))]
    candidates += [(str(i), str(s)) for i, s in (_get(meta, "other_patient_ids") or ())]
    for value, issuer in candidates:
        digits = re.sub(r"\D", "", value)
        if "NHS" in issuer.upper() and digits:
            return digits
    for value, _ in candidates:
        digits = re.sub(r"[\s-]", "", value)
        if nhs.is_valid(digits):
            return digits
    return ""


def compare_with_register(meta: Any, register: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(field, sender value, register value) for each demographic that differs.

    `meta`: an InstanceMeta or a mapping with patient_name (DICOM PN, FAMILY^GIVEN^MIDDLE,
    decoded with the data set's Specific Character Set), birth_date (DA), patient_id,
    issuer_of_patient_id, other_patient_ids.
    `register`: family_name, given_name, dob (date or YYYY-MM-DD), nhs_number.
    Names compare in any script on their letters, ignoring case and accents (`_name_key`);
    given names on the first given name. A name that is empty, or shows undecoded bytes, is
    a mismatch, never a match. An NHS number is compared only when the sender gives one
    (most senders do not).
    """
    mismatches: list[tuple[str, str, str]] = []
    pn = str(_get(meta, "patient_name") or "")
    # A PN has up to three component groups, alphabetic=ideographic=phonetic (PS3.5 6.2.1.2),
    # e.g. 'Yamada^Tarou=山田^太郎=やまだ^たろう'. The register holds one spelling, typed in
    # whichever script the clerk used, so a name matches if any non-empty group's component
    # equals it. Every group is the same person's name, so accepting any of them cannot
    # match a different patient; guessing the register's script could only add stops.
    groups = [group.split("^") + ["", ""] for group in pn.split("=")]
    families = [g[0].strip() for g in groups if g[0].strip()]
    givens = [g[1].strip() for g in groups if g[1].strip()]
    reg_family = str(register.get("family_name") or "").strip()
    reg_given = str(register.get("given_name") or "").strip()
    # Undecoded bytes anywhere (a wrong or unknown Specific Character Set) put every letter
    # in doubt: the family name then never matches, and the analyst sees the whole name.
    if not _readable(pn):
        mismatches.append(("family_name", _shown(pn), reg_family))
    elif not _same_name(families, reg_family):
        mismatches.append(("family_name", " = ".join(families), reg_family))
    if not _same_name([_first_name(g) for g in givens], _first_name(reg_given)):
        mismatches.append(("given_name", _shown(" = ".join(givens)), reg_given))
    sender_dob_text = str(_get(meta, "birth_date") or "").strip()
    reg_dob = parse_date(register.get("dob"))
    if parse_date(sender_dob_text) != reg_dob:
        mismatches.append(("dob", sender_dob_text, reg_dob.isoformat() if reg_dob else ""))
    sender_nhs = sender_nhs_number(meta)
    reg_nhs = re.sub(r"\D", "", str(register.get("nhs_number") or ""))
    if sender_nhs and sender_nhs != reg_nhs:
        mismatches.append(("nhs_number", sender_nhs, reg_nhs))
    return mismatches
