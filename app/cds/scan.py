"""What a CD holds, read without trusting it (issue 12 points 2 and 3). No Flask, no database.

A CD arrives as a folder uploaded file by file (each stored under an opaque server name, its
relative path on the CD kept as text) or as a `.zip`. `unpack_zip` turns a zip into the same
shape: {relpath on the CD: stored path}. `scan_files` reads that mapping and says which
patients, studies and series it found, and what it could not read and why, in plain words.

Everything on a CD is hostile:
- names are text only: a stored file is found by its key in the mapping, never by joining a
  name from the CD (or a DICOMDIR's ReferencedFileID) onto a server path;
- a zip is never `extractall`ed: each entry is checked, then streamed with a running count
  (the sizes in its headers are claims, not facts), and the whole archive is refused when it
  grows past the limits (CPython zipfile docs, "Decompression pitfalls"; PITFALLS.md);
- files are read with `stop_before_pixels` and without `force` (PITFALLS.md, pydicom), each
  one's element lengths walked against its size so a cut-short file is named, not half-read;
- nothing a CD says reaches a caller raw: names and values pass `printable`.
Only small `Instance` records are kept while scanning, never datasets: memory stays flat.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import struct
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = [
    "Instance",
    "Limits",
    "PatientFound",
    "Problem",
    "ScanResult",
    "SeriesFound",
    "StudyFound",
    "printable",
    "scan_files",
    "unpack_zip",
]


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 2 * 1024**3  # what one CD may expand to / hold
    max_files: int = 20_000  # entries in a CD / zip
    max_ratio: int = 100  # zip: uncompressed/compressed per entry and overall
    max_file_bytes: int = 1024**3


@dataclass
class Problem:
    name: str  # the file's name as given, through `printable`
    reason: str  # plain English


@dataclass
class Instance:
    """One readable DICOM instance found: what the scan keeps of it (never the dataset)."""

    path: str  # the server path of the stored file (key of the input mapping's value)
    name: str  # the display name (relpath on the CD)
    patient_name: str
    patient_id: str
    issuer: str
    birth_date: str  # YYYYMMDD or ""
    sex: str
    study_uid: str
    study_date: str  # YYYYMMDD or ""
    study_description: str
    accession: str
    series_uid: str
    series_number: str
    series_description: str
    modality: str
    sop_class_uid: str
    sop_uid: str
    size: int


@dataclass
class SeriesFound:
    series_uid: str
    number: str
    description: str
    modality: str
    instances: int
    paths: list[str] = field(default_factory=list)  # server paths, so study_files works after from_json


@dataclass
class StudyFound:
    study_uid: str
    date: str
    description: str
    accession: str
    modalities: list[str]
    series: list[SeriesFound]
    instances: int
    bytes: int


@dataclass
class PatientFound:
    name: str
    id: str
    issuer: str
    birth_date: str
    studies: list[StudyFound]


@dataclass
class ScanResult:
    patients: list[PatientFound]
    problems: list[Problem]
    files_seen: int
    used_dicomdir: bool

    def to_json(self) -> str:
        """Compact, ASCII-only JSON (every value is already plain text). The stored files'
        common folder is written once ("root") and each path relative to it: 3,000 instances
        with 32-character stored names make about 106 KB."""
        data = {"version": 1, **asdict(self)}
        paths = [path for p in data["patients"] for s in p["studies"] for se in s["series"] for path in se["paths"]]
        folders = {os.path.dirname(path) for path in paths}
        root = os.path.commonpath(list(folders)) if folders and all(os.path.isabs(f) for f in folders) else ""
        if root not in ("", os.sep) and all(path.startswith(root + os.sep) for path in paths):
            for p in data["patients"]:
                for s in p["studies"]:
                    for se in s["series"]:
                        se["paths"] = [path[len(root) + 1:] for path in se["paths"]]
            data["root"] = root
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ScanResult:
        data = json.loads(text)
        root = data.get("root")
        if root:
            for p in data["patients"]:
                for s in p["studies"]:
                    for se in s["series"]:
                        se["paths"] = [root + os.sep + path for path in se["paths"]]
        return cls(
            patients=[
                PatientFound(
                    name=p["name"],
                    id=p["id"],
                    issuer=p["issuer"],
                    birth_date=p["birth_date"],
                    studies=[
                        StudyFound(
                            study_uid=s["study_uid"],
                            date=s["date"],
                            description=s["description"],
                            accession=s["accession"],
                            modalities=list(s["modalities"]),
                            series=[SeriesFound(**se) for se in s["series"]],
                            instances=s["instances"],
                            bytes=s["bytes"],
                        )
                        for s in p["studies"]
                    ],
                )
                for p in data["patients"]
            ],
            problems=[Problem(**pr) for pr in data["problems"]],
            files_seen=data["files_seen"],
            used_dicomdir=data["used_dicomdir"],
        )

    def study_files(self, study_uid: str) -> list[str]:
        """The server paths of that study's instances (every patient it was found under)."""
        return [
            path
            for patient in self.patients
            for study in patient.studies
            if study.study_uid == study_uid
            for series in study.series
            for path in series.paths
        ]


# ---------------------------------------------------------------------------------------
# Names

_NAME_LIMIT = 300  # characters of a name shown; the rest is cut with an ellipsis


def _escape_char(ch: str) -> str | None:
    """The visible stand-in for a character that must not be shown raw, or None if it may."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid text (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(ch)
    if category == "Cc":  # C0, DEL, C1 controls: newlines, escapes, terminal sequences
        return f"\\x{code:02x}"
    if category in ("Cf", "Cs", "Co", "Cn", "Zl", "Zp"):  # bidi overrides, zero-width, unassigned
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return None


def _has_control(name: str) -> bool:
    return any(_escape_char(ch) is not None for ch in name)


def printable(name: str) -> str:
    """`name` as plain, printable text: control and formatting characters (newlines, escape
    sequences, bidi overrides, undecodable bytes) shown as `\\xNN` / `\\uNNNN`, never raw;
    cut at 300 characters."""
    out = []
    for ch in name:
        escaped = _escape_char(ch)
        out.append(ch if escaped is None else escaped)
    text = "".join(out)
    return text if len(text) <= _NAME_LIMIT else text[: _NAME_LIMIT - 1] + "\u2026"


def _size_words(n: int) -> str:
    """2 * 1024**3 -> '2 GB' (the limits are round numbers of binary units)."""
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


def _parts(relpath: str) -> list[str]:
    """A relpath split on either separator, empty and '.' parts dropped."""
    return [p for p in re.split(r"[\\/]", relpath) if p not in ("", ".")]


def _key(parts: Iterable[str]) -> str:
    """How a CD path is matched: case-insensitive, ISO 9660 ';1' versions and trailing dots
    ignored (`IM1;1`, `IM1.` and `im1` are one file)."""
    return "/".join(re.sub(r"(;\d*)?\.?$", "", p).casefold() for p in parts)


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None


# ---------------------------------------------------------------------------------------
# Zip archives

_CHUNK = 1024 * 1024
_RATIO_FLOOR = 1024 * 1024  # ratios are judged above this many bytes: a tiny file of spaces is no bomb


class _Refused(Exception):
    """The whole archive is refused; the message is the reason shown."""


def _ratio_words(ratio: float, limits: Limits) -> str:
    shown = "infinite" if ratio == float("inf") else f"{int(ratio):,}:1"
    return f"compression ratio {shown} is past the limit of {limits.max_ratio:,}:1 (a zip bomb?)"


def _ratio(expanded: int, compressed: int) -> float:
    return float("inf") if compressed <= 0 else expanded / compressed


def _entry_refusal(info: zipfile.ZipInfo) -> str | None:
    """Why one entry may not be extracted, or None."""
    name = info.filename
    if _has_control(name):
        return "the file name holds control characters"
    if _is_absolute(name):
        return "zip entry is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return f"zip entry climbs out of the CD ('{printable(name)}')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "zip entry is a link"
    if info.flag_bits & 0x1:
        return "zip entry is encrypted"
    return None


def unpack_zip(zip_path: Path, dest: Path, limits: Limits = Limits()) -> tuple[dict[str, Path], list[Problem]]:  # noqa: B008 - Limits is frozen
    """Extract safely into dest under opaque names (never the entry's name as a path): returns
    {display relpath: stored path} and problems.

    Refused per entry (a Problem each, the rest extracted): `..`, absolute or drive paths,
    symlinks, names with control characters, encrypted entries, entries past max_file_bytes,
    a damaged entry (its size or CRC does not match: zipfile never reads past the declared
    size), a second entry of the same name. Refused whole (one Problem, whatever was extracted
    removed): more than max_files entries, a declared or actual expanded size past
    max_total_bytes, a declared or actual compression ratio past max_ratio per entry or
    overall (judged above 1 MB: a small file of spaces compresses 100:1 and harms nobody).
    Sizes are counted while streaming; the headers are only used to refuse early.
    A file that is not a zip at all is one Problem. Stored files are `dest/entry-NNNNNN`,
    overwritten by a second run into the same dest (a retried job).
    """
    label = printable(zip_path.name)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return {}, [Problem(label, "not a zip archive (or a damaged one)")]
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with archive:
            return _unpack(archive, dest, limits, written)
    except _Refused as refusal:
        for path in written:
            path.unlink(missing_ok=True)
        return {}, [Problem(label, str(refusal))]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        for path in written:
            path.unlink(missing_ok=True)
        return {}, [Problem(label, "the zip archive is damaged and cannot be read")]


def _unpack(
    archive: zipfile.ZipFile, dest: Path, limits: Limits, written: list[Path]
) -> tuple[dict[str, Path], list[Problem]]:
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise _Refused(f"more than {limits.max_files:,} files")
    declared = sum(info.file_size for info in infos)
    if declared > limits.max_total_bytes:
        raise _Refused(f"the archive expands past the {_size_words(limits.max_total_bytes)} limit")
    declared_compressed = sum(info.compress_size for info in infos)
    for expanded, compressed in [(i.file_size, i.compress_size) for i in infos] + [(declared, declared_compressed)]:
        if expanded > _RATIO_FLOOR and _ratio(expanded, compressed) > limits.max_ratio:
            raise _Refused(_ratio_words(_ratio(expanded, compressed), limits))

    stored: dict[str, Path] = {}
    problems: list[Problem] = []
    seen: set[str] = set()
    total = total_compressed = 0
    for info in infos:
        if info.is_dir() and not stat.S_ISLNK(info.external_attr >> 16):
            continue
        shown = printable(info.filename)
        refusal = _entry_refusal(info)
        if refusal is None and info.file_size > limits.max_file_bytes:
            refusal = f"zip entry is larger than the {_size_words(limits.max_file_bytes)} limit for one file"
        key = _key(_parts(info.filename))
        if refusal is None and key in seen:
            refusal = "zip entry appears twice"
        if refusal is not None:
            problems.append(Problem(shown, refusal))
            continue
        seen.add(key)
        target = dest / f"entry-{len(written):06d}"
        written.append(target)
        count = 0
        try:
            with archive.open(info) as source, open(target, "wb") as out:
                while chunk := source.read(_CHUNK):
                    count += len(chunk)
                    total += len(chunk)
                    if total > limits.max_total_bytes:
                        raise _Refused(f"the archive expands past the {_size_words(limits.max_total_bytes)} limit")
                    if count > _RATIO_FLOOR and _ratio(count, info.compress_size) > limits.max_ratio:
                        raise _Refused(_ratio_words(_ratio(count, info.compress_size), limits))
                    if count > limits.max_file_bytes:
                        raise _EntryTooBig
                    out.write(chunk)
        except _EntryTooBig:
            target.unlink()
            problems.append(
                Problem(shown, f"zip entry is larger than the {_size_words(limits.max_file_bytes)} limit for one file")
            )
            continue
        except zipfile.BadZipFile:
            target.unlink()
            problems.append(Problem(shown, "zip entry is damaged (its size or checksum does not match)"))
            continue
        total_compressed += info.compress_size
        if total > _RATIO_FLOOR and _ratio(total, total_compressed) > limits.max_ratio:
            raise _Refused(_ratio_words(_ratio(total, total_compressed), limits))
        stored[info.filename] = target
    return stored, problems


class _EntryTooBig(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Is the file whole? A walk of its element lengths against its size (PS3.5 section 7)

TRUNCATED = "truncated: the file ends inside a data element"
DAMAGED = "damaged: its data elements do not fit together"
NOT_DICOM = "not a DICOM file"

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


class _Bad(Exception):
    """The file is not whole; the message is the reason shown."""


def _walk_meta(fh: IO[bytes], size: int) -> tuple[int, str]:
    """Walk the File Meta group (explicit VR little endian, after the preamble): return where
    the dataset starts and the transfer syntax UID."""
    pos, syntax = 132, ""
    while pos + 8 <= size:
        fh.seek(pos)
        head = fh.read(12)
        group, element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            break
        if head[4:6] in _LONG_VRS:
            if len(head) < 12:
                raise _Bad(TRUNCATED)
            length, header = struct.unpack("<L", head[8:12])[0], 12
        else:
            length, header = struct.unpack("<H", head[6:8])[0], 8
        if length == _UNDEFINED:
            raise _Bad(DAMAGED)
        pos += header
        if pos + length > size:
            raise _Bad(TRUNCATED)
        if element == 0x0010 and length <= 128:
            fh.seek(pos)
            syntax = fh.read(length).rstrip(b"\0 ").decode("ascii", "replace")
        pos += length
    return pos, syntax


def _walk_dataset(fh: IO[bytes], size: int, start: int, explicit: bool, little: bool) -> None:
    """Walk every element from `start` to the end of the file, into sequences of undefined
    length, and raise _Bad if a length runs past the end or the structure does not close.
    Values are skipped, never read: the cost is a few small reads per element."""
    tag_fmt, short_fmt, long_fmt = ("<HH", "<H", "<L") if little else (">HH", ">H", ">L")
    # Each frame: (kind, explicit): "dataset" holds elements (the top one ends at the file's
    # end, an item's at its delimiter), "sequence" holds items, "fragments" holds raw items.
    stack: list[tuple[str, bool]] = [("dataset", explicit)]
    pos = start
    while True:
        kind, mode = stack[-1]
        if pos == size and len(stack) == 1:
            return
        if pos + 8 > size:
            raise _Bad(TRUNCATED)
        fh.seek(pos)
        head = fh.read(12)
        group, element = struct.unpack(tag_fmt, head[:4])
        tag = (group << 16) | element
        if group == 0xFFFE:
            length = struct.unpack(long_fmt, head[4:8])[0]
            pos += 8
            if tag == _ITEM and kind in ("sequence", "fragments"):
                if length == _UNDEFINED:
                    if kind == "fragments":
                        raise _Bad(DAMAGED)
                    if len(stack) >= _MAX_DEPTH:
                        raise _Bad(f"damaged: sequences nested more than {_MAX_DEPTH} deep")
                    stack.append(("dataset", mode))
                elif pos + length > size:
                    raise _Bad(TRUNCATED)
                else:
                    pos += length
            elif (tag == _ITEM_END and kind == "dataset" and len(stack) > 1) or (
                tag == _SEQUENCE_END and kind in ("sequence", "fragments")
            ):
                stack.pop()
            else:
                raise _Bad(DAMAGED)
            continue
        if kind != "dataset":
            raise _Bad(DAMAGED)
        vr = head[4:6]
        if mode and vr.isalpha() and vr.isupper():
            if vr in _LONG_VRS:
                if len(head) < 12:
                    raise _Bad(TRUNCATED)
                length, header = struct.unpack(long_fmt, head[8:12])[0], 12
            else:
                length, header = struct.unpack(short_fmt, head[6:8])[0], 8
        else:  # implicit VR (or an element written implicitly in an explicit file, as pydicom allows)
            vr, length, header = b"", struct.unpack(long_fmt, head[4:8])[0], 8
        pos += header
        if length == _UNDEFINED:
            if len(stack) >= _MAX_DEPTH:
                raise _Bad(f"damaged: sequences nested more than {_MAX_DEPTH} deep")
            if vr == b"UN":  # an implicit VR little endian sequence inside (PS3.5 6.2.2)
                stack.append(("sequence", False))
            elif vr in (b"OB", b"OW") or tag == 0x7FE00010:
                stack.append(("fragments", mode))  # encapsulated pixel data
            elif vr in (b"SQ", b""):
                stack.append(("sequence", mode))
            else:
                raise _Bad(DAMAGED)
        elif pos + length > size:
            raise _Bad(TRUNCATED)
        else:
            pos += length


def _headerless_mode(head: bytes, size: int) -> bool | None:
    """For a file without the 128-byte preamble and 'DICM': explicit (True) or implicit
    (False) VR little endian if it starts like a dataset (an element of group 0008, the
    first group of every composite instance), else None: not DICOM."""
    if len(head) < 8:
        return None
    group, element = struct.unpack("<HH", head[:4])
    if group != 0x0008 or element > 0x0020:
        return None
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    length = struct.unpack("<L", head[4:8])[0]
    return False if length <= min(size - 8, 1024) else None


# ---------------------------------------------------------------------------------------
# Reading one file

_TAGS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
]
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_VALUE_LIMIT = 4096  # bytes of one value read; a longer one is shown as "" (no name is that long)


def _text(ds: Dataset, keyword: str, limit: int = 128) -> str:
    """One value as printable text, "" when absent, too long or undecodable."""
    try:
        if keyword not in ds:
            return ""
        raw = ds.get_item(keyword)
        length = getattr(raw, "length", 0)
        if isinstance(length, int) and length > _VALUE_LIMIT:
            return ""
        value = ds[keyword].value
    except Exception:  # noqa: BLE001 - a bad value or character set is "", not a failed scan
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    return printable(str(value).strip().strip("\0"))[:limit]


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword, 80)
    return value if len(value) <= 64 and _UID.fullmatch(value) else ""


def _date(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword, 16)
    return value if re.fullmatch(r"\d{8}", value) else ""


_UID_WORDS = {
    "StudyInstanceUID": "Study Instance UID",
    "SeriesInstanceUID": "Series Instance UID",
    "SOPInstanceUID": "SOP Instance UID",
}


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom validates values as it reads and logs the bad ones *with the value* ("Invalid
    value for VR DA: '1948-03-14'"): a patient's details in the log (issue 11.6). Turn that
    off while a CD is read, with pydicom's other log lines and warnings about what it reads:
    what matters of them comes back as a Problem. Process-wide settings, restored after: a
    scan runs in a worker process, one job at a time."""
    saved = pydicom_config.settings.reading_validation_mode
    logger = logging.getLogger("pydicom")
    was_disabled = logger.disabled
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = saved
        logger.disabled = was_disabled


def _read(path: str, name: str, limits: Limits) -> Instance | str | None:
    """One stored file: an Instance, the reason it is not one (str), or None for a DICOMDIR
    (a directory of the CD, not an instance)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_file_bytes:
                return f"larger than the {_size_words(limits.max_file_bytes)} limit for one file"
            head = fh.read(132)
            headerless = head[128:132] != b"DICM"
            syntax = ""
            if headerless:
                explicit = _headerless_mode(head, size)
                if explicit is None:
                    return NOT_DICOM
                start, little = 0, True
            else:
                start, syntax = _walk_meta(fh, size)
                explicit, little = syntax != _IMPLICIT_LE, syntax != _EXPLICIT_BE
            if syntax not in _DEFLATED:
                _walk_dataset(fh, size, start, explicit, little)
            fh.seek(0)
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=_TAGS, force=headerless)
            if _text(ds, "SOPClassUID") == _DICOMDIR_CLASS or (
                not headerless and _text(ds.file_meta, "MediaStorageSOPClassUID") == _DICOMDIR_CLASS
            ):
                return None
            uids = {keyword: _uid(ds, keyword) for keyword in _UID_WORDS}
            if headerless and not (uids["StudyInstanceUID"] and uids["SOPInstanceUID"]):
                return NOT_DICOM  # parsed, but not into anything like an instance
            for keyword, words in _UID_WORDS.items():
                if not uids[keyword]:
                    present = _text(ds, keyword)
                    return f"the {words} is {'not a valid UID' if present else 'missing'}"
            return Instance(
                path=path,
                name=name,
                patient_name=_text(ds, "PatientName"),
                patient_id=_text(ds, "PatientID", 64),
                issuer=_text(ds, "IssuerOfPatientID", 64),
                birth_date=_date(ds, "PatientBirthDate"),
                sex=_text(ds, "PatientSex", 16),
                study_uid=uids["StudyInstanceUID"],
                study_date=_date(ds, "StudyDate"),
                study_description=_text(ds, "StudyDescription"),
                accession=_text(ds, "AccessionNumber", 16),
                series_uid=uids["SeriesInstanceUID"],
                series_number=_text(ds, "SeriesNumber", 12),
                series_description=_text(ds, "SeriesDescription"),
                modality=_text(ds, "Modality", 16),
                sop_class_uid=_uid(ds, "SOPClassUID"),
                sop_uid=uids["SOPInstanceUID"],
                size=size,
            )
    except _Bad as bad:
        return str(bad)
    except OSError:
        return "the stored file cannot be read"
    except RecursionError:  # deeply nested sequences (pydicom#2330)
        return "damaged: sequences nested too deeply to read"
    except Exception:  # noqa: BLE001 - anything pydicom raises on a hostile file is that file's problem
        return "the DICOM header cannot be read"


# ---------------------------------------------------------------------------------------
# The DICOMDIR

_DICOMDIR_LIMIT = 64 * 1024**2  # a DICOMDIR for 20,000 instances is about 10 MB


def _dicomdir_references(path: str) -> list[list[str]] | str:
    """Every ReferencedFileID of the DICOMDIR's records, as lists of components (each
    component as written, split on separators), in record order; or why it cannot be used."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > _DICOMDIR_LIMIT:
                return f"the DICOMDIR is larger than {_size_words(_DICOMDIR_LIMIT)}"
            if fh.read(132)[128:132] != b"DICM":
                return "the DICOMDIR is not a DICOM file"
            start, syntax = _walk_meta(fh, size)
            if syntax not in _DEFLATED:
                _walk_dataset(fh, size, start, syntax != _IMPLICIT_LE, syntax != _EXPLICIT_BE)
            fh.seek(0)
            ds = dcmread(fh)
            references: list[list[str]] = []
            for record in ds.get("DirectoryRecordSequence") or []:
                value = record.get("ReferencedFileID")
                if value is None:
                    continue
                components = [value] if isinstance(value, str) else [str(v) for v in value]
                references.append(components)
            return references
    except _Bad as bad:
        return f"the DICOMDIR is {bad}"
    except OSError:
        return "the stored DICOMDIR cannot be read"
    except Exception:  # noqa: BLE001 - includes RecursionError: any failure means "read every file"
        return "the DICOMDIR cannot be read"


def _reference_problem(components: list[str]) -> str | None:
    shown = printable("/".join(components))
    joined = "\\".join(components)
    if _has_control(joined):
        return f"the DICOMDIR names a file with control characters ('{shown}')"
    if (components and _is_absolute(components[0])) or ".." in re.split(r"[\\/]", joined):
        return f"the DICOMDIR points outside the CD ('{shown}')"
    if not _parts(joined):
        return f"the DICOMDIR names an empty file ID ('{shown}')"
    return None


# ---------------------------------------------------------------------------------------
# Scanning a CD


def scan_files(
    files: Mapping[str, Path],
    limits: Limits = Limits(),  # noqa: B008 - Limits is frozen
    progress: Callable[[int, int], None] | None = None,
    partial: Callable[[ScanResult], None] | None = None,
    partial_every: int = 200,
) -> ScanResult:
    """files: {relpath as on the CD (display name): stored server path}.

    With a DICOMDIR (basename DICOMDIR in any case, the shallowest), its records'
    ReferencedFileIDs are resolved against the mapping's relpaths (case-insensitive, either
    separator, relative to the DICOMDIR's folder), never against the server's file system:
    one that climbs out or is absolute, or names no file of the CD, is a Problem and nothing
    is read for it. Referenced files are read first, then every other file (CDs carry extra
    files). Without one, every file is read. A file is an instance when it is Part 10 (or,
    without the preamble, starts like a dataset and has study and SOP instance UIDs), is
    whole (its element lengths fit its size) and has Study, Series and SOP Instance UIDs.
    A second copy of an instance (same SOP Instance UID) is a Problem and not counted.
    progress(done, total) is called after every file, total = len(files); the caller throttles.
    partial(result so far) is called every `partial_every` files read, so a page can show
    what has been found while the scan goes on.
    """
    total = len(files)
    if total > limits.max_files:
        return ScanResult([], [Problem("(the CD)", f"more than {limits.max_files:,} files")], total, False)
    problems: list[Problem] = []
    entries: list[tuple[str, str]] = []  # (relpath, server path) still to read
    held = 0
    for relpath, stored_path in files.items():
        if _has_control(relpath):
            problems.append(Problem(printable(relpath), "the file name holds control characters"))
            continue
        try:
            held += os.stat(stored_path).st_size
        except OSError:
            problems.append(Problem(printable(relpath), "the stored file cannot be read"))
            continue
        entries.append((relpath, str(stored_path)))
    if held > limits.max_total_bytes:
        return ScanResult(
            [], [Problem("(the CD)", f"the CD holds more than the {_size_words(limits.max_total_bytes)} limit")],
            total, False,
        )

    by_key: dict[str, tuple[str, str]] = {}
    for relpath, stored in entries:
        by_key.setdefault(_key(_parts(relpath)), (relpath, stored))
    dicomdirs = sorted(
        (len(_parts(relpath)), relpath, stored)
        for relpath, stored in entries
        if _parts(relpath) and _parts(relpath)[-1].casefold() == "dicomdir"
    )

    done = len(files) - len(entries)  # names refused above count as done
    ordered: list[tuple[str, str]] = []
    used_dicomdir = False
    if dicomdirs:
        _, dir_relpath, dir_stored = dicomdirs[0]
        dir_name = printable(dir_relpath)
        with _quiet_pydicom():
            references = _dicomdir_references(dir_stored)
        done += 1  # the DICOMDIR is read here, not again below
        if progress is not None:
            progress(done, total)
        if isinstance(references, str):
            problems.append(Problem(dir_name, references + "; every file was read instead"))
            ordered = [entry for entry in entries if entry[1] != dir_stored]
        else:
            used_dicomdir = True
            folder = _parts(dir_relpath)[:-1]
            queued: set[str] = set()
            for components in references:
                reason = _reference_problem(components)
                if reason is None:
                    key = _key(folder + _parts("\\".join(components)))
                    entry = by_key.get(key)
                    if entry is None:
                        reason = (
                            f"the DICOMDIR names '{printable('/'.join(components))}' but the CD has no such file"
                        )
                    elif key not in queued and entry[1] != dir_stored:
                        queued.add(key)
                        ordered.append(entry)
                if reason is not None:
                    problems.append(Problem(dir_name, reason))
            for relpath, stored in entries:
                if _key(_parts(relpath)) not in queued and stored != dir_stored:
                    ordered.append((relpath, stored))
    else:
        ordered = entries

    builder = _Builder()
    for relpath, stored in ordered:
        with _quiet_pydicom():
            found = _read(stored, printable(relpath), limits)
        if isinstance(found, Instance):
            first = builder.add(found)
            if first is not None:
                problems.append(Problem(found.name, f"a second copy of '{first}' (the same SOP Instance UID)"))
        elif isinstance(found, str):
            problems.append(Problem(printable(relpath), found))
        done += 1
        if progress is not None:
            progress(done, total)
        if partial is not None and done % max(partial_every, 1) == 0:
            partial(ScanResult(builder.patients(), list(problems), total, used_dicomdir))
    return ScanResult(builder.patients(), problems, total, used_dicomdir)


class _Builder:
    """Gathers instances into patients > studies > series as they come, keeping counts and
    paths only. Patients are told apart by ID, issuer, name and birth date together: a CD whose
    demographics disagree shows two patients for the analyst to see, not one merged."""

    def __init__(self) -> None:
        self._patients: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._sops: dict[str, str] = {}

    def add(self, inst: Instance) -> str | None:
        """Count the instance; if its SOP Instance UID was already seen, count nothing and
        return the first copy's name."""
        if inst.sop_uid in self._sops:
            return self._sops[inst.sop_uid]
        self._sops[inst.sop_uid] = inst.name
        key = (inst.patient_id, inst.issuer, inst.patient_name, inst.birth_date)
        patient = self._patients.setdefault(key, {"studies": {}})
        study = patient["studies"].setdefault(
            inst.study_uid,
            {
                "date": inst.study_date,
                "description": inst.study_description,
                "accession": inst.accession,
                "modalities": set(),
                "series": {},
                "instances": 0,
                "bytes": 0,
            },
        )
        if inst.modality:
            study["modalities"].add(inst.modality)
        study["instances"] += 1
        study["bytes"] += inst.size
        series = study["series"].setdefault(
            inst.series_uid,
            SeriesFound(inst.series_uid, inst.series_number, inst.series_description, inst.modality, 0),
        )
        series.instances += 1
        series.paths.append(inst.path)
        return None

    def patients(self) -> list[PatientFound]:
        def series_order(s: SeriesFound) -> tuple[int, str]:
            return (int(s.number) if s.number.lstrip("-").isdigit() else 1 << 31, s.series_uid)

        found = []
        for (pid, issuer, name, birth_date), patient in self._patients.items():
            studies = [
                StudyFound(
                    study_uid=uid,
                    date=s["date"],
                    description=s["description"],
                    accession=s["accession"],
                    modalities=sorted(s["modalities"]),
                    series=sorted(s["series"].values(), key=series_order),
                    instances=s["instances"],
                    bytes=s["bytes"],
                )
                for uid, s in patient["studies"].items()
            ]
            studies.sort(key=lambda s: (s.date, s.study_uid))
            found.append(PatientFound(name=name, id=pid, issuer=issuer, birth_date=birth_date, studies=studies))
        found.sort(key=lambda p: (p.name, p.id, p.issuer, p.birth_date))
        return found
