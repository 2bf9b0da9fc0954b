"""The gateway's Storage SCP: receive instances to disk, quarantine what is malformed.

`GatewaySCP` accepts C-ECHO and C-STORE for the storage SOP classes in the transfer
syntaxes of `ae.RECEIVE_TRANSFER_SYNTAXES` (we never decode pixel data, so compressed
syntaxes are fine), on the desk's own associations (app.dicom.acceptor). Each instance
is an `Incoming`, which C-GET retrieval (app.dicom.get_link) uses too:

1. the encoded data set is written behind File Meta Information to a temporary file
   beside its destination a PDU at a time, as it arrives (no decoding, nothing held);
2. its structure is walked element by element — tags and lengths only, values skipped,
   sequences entered whatever their length encoding — so a truncated or inconsistent
   data set, or one nested deeper than MAX_SEQUENCE_DEPTH, is caught (pydicom silently
   stops at a truncation, and parses defined-length sequences only when first used);
3. the attributes we need are read where the walk found them (`_header`);
4. UIDs are checked against the UID grammar before they name a directory or a file;
5. a good instance is renamed into `<storage>/<study uid>/<sop uid>.dcm` (atomic, and a
   re-sent instance overwrites its earlier copy); anything else goes to the quarantine
   directory under a generated name, with a `.reason.txt` beside it, and
   `GatewaySCP.on_quarantined` hears of it (with the patient, if the header was readable).

Nothing here raises into the association: every outcome is a C-STORE status (PS3.4
B.2.3, Table B.2-1) with an Error Comment, and the SCP keeps serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import struct
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID as IMPLEMENTATION_CLASS_UID,
)
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_VERSION as IMPLEMENTATION_VERSION,
)

from app.dicom.acceptor import Sink, StorageServer, StoreOutcome, StoreRequest
from app.dicom.ae import DEFAULT_CONFIG, AEConfig

log = logging.getLogger(__name__)

# C-STORE response statuses (PS3.4 B.2.3, Table B.2-1; PS3.7 Annex C).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (disk full, not recorded)
STATUS_SOP_CLASS_MISMATCH = 0xA900  # Error: data set does not match SOP class
# Error: cannot understand (0xC000-0xCFFF). pynetdicom itself uses 0xC210/0xC211, so ours
# start at 0xC220 to tell them apart in a peer's log.
STATUS_MALFORMED = 0xC220  # unparseable, truncated or inconsistent data set
STATUS_MISSING_ATTRIBUTE = 0xC221  # SOP Instance UID, Study UID or Patient ID missing/empty
STATUS_INVALID_UID = 0xC222  # a UID breaks the UID grammar (and would be unsafe as a path)
STATUS_UID_MISMATCH = 0xC223  # data set's SOP Instance UID differs from the request's
STATUS_INTERNAL = 0xC22F  # anything unexpected on our side

# PS3.5 9.1: a UID is components of digits separated by '.', at most 64 characters.
# Leading zeros in a component are not conformant but common in the wild and harmless in a
# path, so they are tolerated; empty components (and so '..' and leading dots) are not.
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")

MAX_SEQUENCE_DEPTH = 32


def valid_uid(value: object) -> bool:
    """True if `value` is a UID safe to use as a path component (digits and dots, ≤64)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def _safe(text: object, limit: int = 200) -> str:
    """An untrusted value for a log line or reason file: repr'd (no raw newlines), cut."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "...'"


class Malformed(ValueError):
    """The data set's structure is broken (truncated, bad delimiters, lengths past EOF)."""


class TooDeep(Malformed):
    """Sequences nest deeper than MAX_SEQUENCE_DEPTH (pydicom would hit RecursionError)."""


# -- structure walk -------------------------------------------------------------------------

# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}  # Float, Double Float, Pixel Data


def check_structure(fp: BinaryIO, start: int, end: int, *, implicit: bool, little: bool,
                    top: dict[int, tuple[int, int, bytes | None]] | None = None) -> bool:
    """Walk the data set between byte offsets start and end without reading values;
    return whether it has (float) pixel data at the top level.

    Raises Malformed if an element header is cut short, a length runs past the end,
    a delimiter is missing or misplaced, or sequences nest deeper than MAX_SEQUENCE_DEPTH.
    A cut exactly between two elements leaves a well-formed, shorter data set: the caller
    catches the usual case (an image cut before its pixel data) with the return value.
    """
    fp.seek(start)
    found: dict[int, tuple[int, int, bytes | None]] = {} if top is None else top
    _walk_dataset(fp, end, implicit, "<" if little else ">", 0, in_undefined_item=False, top=found)
    return not found.keys().isdisjoint(_PIXEL_TAGS)


def _walk_dataset(fp: BinaryIO, end: int, implicit: bool, endian: str, depth: int,
                  in_undefined_item: bool, top: dict[int, tuple[int, int, bytes | None]] | None = None,
                  in_defined_item: bool = False) -> None:
    pos = fp.tell()
    while True:
        if pos >= end:
            if in_undefined_item:
                raise Malformed("data set ends inside a sequence item (item delimiter missing)")
            return
        head = fp.read(8)
        if len(head) < 8 or pos + 8 > end:
            raise Malformed(f"data set ends inside an element header at byte {pos}")
        group, elem = struct.unpack(endian + "HH", head[:4])
        if group == 0xFFFE:
            if (group, elem) == _ITEM_END and (in_undefined_item or (in_defined_item and pos + 8 == end)):
                return  # (a redundant delimiter closing a defined-length item is tolerated, as pydicom does)
            raise Malformed(f"unexpected delimiter ({group:04X},{elem:04X}) at byte {pos}")
        tag = group << 16 | elem
        vr: bytes | None = None
        if implicit:
            (length,) = struct.unpack(endian + "I", head[4:8])
        else:
            vr = head[4:6]
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):  # two upper-case letters
                raise Malformed(f"invalid VR {vr!r} at byte {pos}")
            if vr in _LONG_VRS:
                more = fp.read(4)
                if len(more) < 4:
                    raise Malformed(f"data set ends inside an element header at byte {pos}")
                (length,) = struct.unpack(endian + "I", more)
            else:
                (length,) = struct.unpack(endian + "H", head[6:8])
        value_start = pos + (12 if vr is not None and vr in _LONG_VRS else 8)
        if top is not None:
            top[tag] = (value_start, length, vr)  # (where the value starts, its length, VR if explicit)
        if length == _UNDEFINED:
            if vr is not None and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                raise Malformed(f"undefined length on VR {vr!r} at byte {pos}")
            if vr == b"UN":
                # PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian items.
                _walk_items(fp, end, True, "<", depth + 1, defined=False, datasets=True)
            else:
                # Encapsulated pixel data (OB/OW) holds fragments, not data sets.
                _walk_items(fp, end, implicit, endian, depth + 1, defined=False,
                            datasets=vr not in (b"OB", b"OW"))
            pos = fp.tell()
            continue
        if value_start + length > end:
            raise Malformed(
                f"element ({group:04X},{elem:04X}) at byte {pos} claims {length} bytes; "
                f"only {end - value_start} remain (truncated)"
            )
        value_end = value_start + length
        # A sequence of defined length is walked too: pydicom parses it lazily, on first
        # access, so nesting hidden there would otherwise surface later as RecursionError.
        kind = _defined_length_kind(fp, tag, vr, implicit, endian, length)
        if kind is not None:
            item_implicit, item_endian = (True, "<") if vr == b"UN" else (implicit, endian)
            try:
                _walk_items(fp, value_end, item_implicit, item_endian, depth + 1, defined=True, datasets=True)
            except TooDeep:
                raise
            except Malformed:
                if kind == "sequence":
                    raise
                # "maybe": a private element that merely looks like items; opaque to us.
        fp.seek(value_end)
        pos = value_end


def _defined_length_kind(fp: BinaryIO, tag: int, vr: bytes | None, implicit: bool, endian: str,
                         length: int) -> str | None:
    """Whether a defined-length value is a sequence ("sequence"), may be one ("maybe": a
    private element whose value starts with an item), or is opaque (None).

    Mirrors pydicom: explicit SQ; implicit VR whose tag the dictionary calls SQ; explicit
    UN that pydicom may read as SQ (a dictionary SQ tag, or a private tag it knows from its
    private dictionary), which is walked but, if it does not walk as items, left opaque.
    """
    if vr == b"SQ":
        return "sequence"
    if not (implicit or vr == b"UN") or length < 8:
        return None
    if not (tag >> 16) & 1:
        try:
            is_sq = dictionary_VR(tag) == "SQ"
        except KeyError:
            return None
        return None if not is_sq else ("maybe" if vr == b"UN" else "sequence")
    here = fp.tell()
    first = fp.read(4)
    fp.seek(here)
    if len(first) == 4 and struct.unpack(("<" if vr == b"UN" else endian) + "HH", first) == _ITEM:
        return "maybe"
    return None


def _walk_items(fp: BinaryIO, end: int, implicit: bool, endian: str, depth: int, *,
                defined: bool, datasets: bool) -> None:
    """Walk a sequence's items: up to `end` (defined length) or its delimiter (undefined).

    Each item, of defined or undefined length, is walked as a data set when `datasets`
    (fragments of encapsulated pixel data are skipped), so the depth limit holds for every
    mix of length encodings.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise TooDeep(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
    while True:
        pos = fp.tell()
        if defined and pos == end:
            return
        head = fp.read(8)
        if len(head) < 8 or pos + 8 > end:
            if defined:
                raise Malformed(f"sequence at byte {pos} ends inside an item header")
            raise Malformed("data set ends inside a sequence (sequence delimiter missing)")
        group, elem, length = struct.unpack(endian + "HHI", head)
        if (group, elem) == _SEQUENCE_END:
            return  # (in a defined-length sequence pydicom stops here too)
        if (group, elem) != _ITEM:
            raise Malformed(f"expected an item at byte {pos}, found ({group:04X},{elem:04X})")
        if length == _UNDEFINED:
            _walk_dataset(fp, end, implicit, endian, depth, in_undefined_item=True)
        elif fp.tell() + length > end:
            raise Malformed(f"item at byte {pos} claims {length} bytes past the end (truncated)")
        elif datasets:
            item_end = fp.tell() + length
            _walk_dataset(fp, item_end, implicit, endian, depth, in_undefined_item=False,
                          in_defined_item=True)
            fp.seek(item_end)
        else:
            fp.seek(length, os.SEEK_CUR)


# -- metadata -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceMeta:
    """What the desk needs to know about a received instance (read with stop_before_pixels)."""

    patient_id: str
    patient_name: str
    birth_date: str
    accession: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    study_date: str
    modality: str
    acquisition_date: str
    study_description: str = ""
    issuer_of_patient_id: str = ""
    other_patient_ids: tuple[tuple[str, str], ...] = ()  # (id, issuer) from (0010,1002)
    transfer_syntax: str = ""
    calling_ae: str = ""
    size_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(ds: Dataset, keyword: str, plain: Mapping[str, str] | None = None) -> str:
    if plain is not None and keyword in plain:
        return plain[keyword]
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()
    except Exception:  # noqa: BLE001 - odd charsets or values must not stop a receive
        return ""


def read_meta(ds: Dataset, plain: Mapping[str, str] | None = None, **extra: Any) -> InstanceMeta:
    """InstanceMeta from a data set read with stop_before_pixels (and, from the gateway,
    the `plain` text values it decoded itself, by keyword)."""

    def text(keyword: str) -> str:
        return _text(ds, keyword, plain)

    others: list[tuple[str, str]] = []
    try:
        for item in ds.get("OtherPatientIDsSequence", None) or []:
            others.append((_text(item, "PatientID"), _text(item, "IssuerOfPatientID")))
    except Exception:  # noqa: BLE001 - an odd sequence must not stop a receive
        log.warning("unreadable Other Patient IDs Sequence; ignored")
    return InstanceMeta(
        patient_id=text("PatientID"),
        patient_name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        accession=text("AccessionNumber"),
        study_uid=text("StudyInstanceUID"),
        series_uid=text("SeriesInstanceUID"),
        sop_uid=text("SOPInstanceUID"),
        sop_class_uid=text("SOPClassUID"),
        study_date=text("StudyDate"),
        modality=text("Modality"),
        acquisition_date=text("AcquisitionDate"),
        study_description=text("StudyDescription"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        other_patient_ids=tuple(others),
        **extra,
    )


# -- receiving one instance -----------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineInfo:
    """What is known of an instance the gateway refused: for the desk's list of them.

    The patient fields are filled when the header could be read (a missing Study UID, a
    bad UID); they stay empty for unreadable or non-DICOM content. Untrusted text, cut to
    the desk's column sizes.
    """

    reason: str
    status: int
    received_at: datetime
    calling_ae: str = ""
    patient_name: str = ""
    patient_id: str = ""
    study_uid: str = ""
    size_bytes: int = 0


@dataclass
class Received:
    """The outcome of one C-STORE: status for the peer, and where the bytes went."""

    status: int
    reason: str = ""
    path: Path | None = None  # the stored file (success) or the quarantined one
    meta: InstanceMeta | None = None
    quarantined: bool = False
    request_sop_uid: str = ""
    info: QuarantineInfo | None = None  # set when quarantined

    @property
    def ok(self) -> bool:
        return self.status == STATUS_SUCCESS

    def status_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        if self.reason:
            # (0000,0902) Error Comment, LO: at most 64 characters (PS3.7 C.4.1.1.3).
            ds.ErrorComment = self.reason.encode("ascii", "replace").decode()[:64]
        return ds


class _Reject(Exception):
    def __init__(self, status: int, reason: str, *, meta: InstanceMeta | None = None,
                 readable: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.meta = meta  # the header as read, when the data set parsed
        self.readable = readable  # False: do not try to read the patient (nesting bomb)


def _readable_patient(path: Path | None) -> tuple[str, str, str]:
    """(patient name, patient ID, study UID) of a refused file, as far as pydicom reads them.

    Best effort and never raises: a truncated file often still names its patient; garbage
    gives empty strings.
    """
    if path is None:
        return "", "", ""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=["SpecificCharacterSet", "PatientName", "PatientID", "StudyInstanceUID"])
        return _text(ds, "PatientName"), _text(ds, "PatientID"), _text(ds, "StudyInstanceUID")
    except Exception:  # noqa: BLE001 - unreadable is an answer, not an error
        return "", "", ""


def _quarantine_info(status: int, reason: str, details: Mapping[str, object], where: Path | None,
                     meta: InstanceMeta | None, patient_readable: bool) -> QuarantineInfo:
    if meta is not None:
        name, pid, study = meta.patient_name, meta.patient_id, meta.study_uid
    elif patient_readable:
        name, pid, study = _readable_patient(where)
    else:
        name = pid = study = ""
    try:
        size = where.stat().st_size if where is not None else 0
    except OSError:
        size = 0
    return QuarantineInfo(
        reason=reason[:300], status=status, received_at=datetime.now(UTC),
        calling_ae=str(details.get("calling_ae", ""))[:16], patient_name=name[:200],
        patient_id=pid[:64], study_uid=study[:64], size_bytes=size,
    )


def quarantine(
    quarantine_dir: Path, source: Path | None, reason: str, details: Mapping[str, object]
) -> Path:
    """Move `source` (if any) into quarantine under a generated name; write the reason."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stem = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:12]
    target = quarantine_dir / f"{stem}.dcm"
    if source is not None and source.exists():
        os.replace(source, target)
    lines = [f"reason: {reason}"] + [f"{key}: {_safe(value)}" for key, value in details.items()]
    (quarantine_dir / f"{stem}.reason.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


_META_ELEMENT = struct.Struct("<HH2sH")  # Explicit VR LE, short form: group, element, VR, length


def file_meta_header(sop_class: str, sop_uid: str, syntax: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1) for a received
    data set; b"" when a request's UID cannot be one (the instance is then refused).
    Encoded by hand: pydicom's writer cost more than the rest of a receive together."""

    def uid(text: str) -> bytes | None:
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not raw or len(raw) > 64 or not raw.isascii() or not all(32 < ch < 127 for ch in raw):
            return None  # (a printable one that breaks the UID grammar is refused later, by name)
        return raw + b"\x00" if len(raw) % 2 else raw

    values = (uid(sop_class), uid(sop_uid), uid(syntax), uid(IMPLEMENTATION_CLASS_UID))
    if any(value is None for value in values):
        return b""
    version = IMPLEMENTATION_VERSION.encode("ascii")
    version += b" " if len(version) % 2 else b""
    body = b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"  # (0002,0001) version
    for element, vr, value in ((0x0002, b"UI", values[0]), (0x0003, b"UI", values[1]), (0x0010, b"UI", values[2]),
                               (0x0012, b"UI", values[3]), (0x0013, b"SH", version)):
        assert value is not None  # noqa: S101 - checked above; narrows the type
        body += _META_ELEMENT.pack(0x0002, element, vr, len(value)) + value
    length = _META_ELEMENT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body))
    return b"\x00" * 128 + b"DICM" + length + body


def open_temp(storage_dir: Path) -> tuple[Path, BinaryIO]:
    """A new, empty temporary file in `storage_dir/.incoming` for an instance to arrive in,
    open for writing and, by the checks in `Incoming.finish`, reading back.

    Creating a file costs 0.2-0.3 ms on this machine's disk, a tenth of a C-GET's time per
    0.5 MB instance: a receiver that waits on the network can make the next one while it
    waits and hand it to `Incoming` as `spare`."""
    incoming = storage_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    temp = incoming / f"{uuid.uuid4().hex}.part"
    return temp, temp.open("w+b")


class Incoming:
    """One instance arriving: its data set written behind File Meta Information to a
    temporary file in `storage_dir/.incoming` (made here, or `spare` from `open_temp`) a
    piece at a time, as the network hands it over (nothing decoded, nothing held), then
    settled by `finish`.

    A write that fails (disk full) is remembered and the rest of the data set is dropped:
    the caller keeps reading it off the association, and `finish` answers 0xA700.
    """

    def __init__(self, storage_dir: Path, *, sop_class: str, sop_uid: str, syntax: str,
                 details: dict[str, object], fsync: bool = False,
                 spare: tuple[Path, BinaryIO] | None = None) -> None:
        self.sop_class = sop_class
        self.sop_uid = sop_uid
        self.syntax = UID(syntax)
        self.details = details
        self.fsync = fsync
        self.size = 0
        self.error: OSError | None = None
        self.header = b""
        self.temp: Path | None = None
        self._out: BinaryIO | None = None
        self.header = file_meta_header(sop_class, sop_uid, str(syntax))
        try:
            self.temp, self._out = spare if spare is not None else open_temp(storage_dir)
            self._out.write(self.header)
        except OSError as exc:
            self.error = exc
            self._close()

    def write(self, piece: memoryview | bytes) -> None:
        """Append a piece of the data set; never raises (a failure is kept for `finish`)."""
        self.size += len(piece)
        if self._out is None:
            return
        try:
            self._out.write(piece)
        except OSError as exc:
            self.error = exc
            self._close()

    def _close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None

    def discard(self) -> None:
        """The association ended under this instance: nothing of it is kept. Never raises."""
        self._close()
        if self.temp is not None:
            with contextlib.suppress(OSError):
                self.temp.unlink(missing_ok=True)
            self.temp = None

    def finish(self, *, storage_dir: Path, quarantine_dir: Path, study_folders: bool = True) -> Received:
        """Check the instance and rename it into place, or quarantine it with its reason.
        Never raises."""
        if self._out is not None and self.error is None:
            try:
                self._out.flush()
                if self.fsync:
                    os.fsync(self._out.fileno())
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self.discard()
            log.error("C-STORE could not be written: %s", self.error)
            return Received(STATUS_OUT_OF_RESOURCES, f"cannot write: {self.error.strerror or self.error}",
                            request_sop_uid=self.sop_uid)
        try:
            return settle(self.temp, len(self.header), self.syntax, request_sop=self.sop_uid,
                          request_class=self.sop_class, details=self.details, storage_dir=storage_dir,
                          quarantine_dir=quarantine_dir, study_folders=study_folders, opened=self._out,
                          size=len(self.header) + self.size)
        finally:
            self._close()


def settle(temp: Path | None, header_size: int, syntax: UID, *, request_sop: str, request_class: str,
           details: dict[str, object], storage_dir: Path, quarantine_dir: Path,
           study_folders: bool = True, opened: BinaryIO | None = None, size: int | None = None) -> Received:
    """Check a received instance written to `temp` (File Meta of `header_size` bytes, then
    the data set as received) and rename it into `<storage>/<study uid>/<sop uid>.dcm`, or
    quarantine it (see the module docstring). `opened`: the file, still open for reading
    (it is read there and closed before the rename), and its `size`. Never raises."""
    calling = str(details.get("calling_ae", ""))
    details.setdefault("transfer_syntax", str(syntax))
    try:
        if temp is None:
            raise OSError("no temporary file")
        if not header_size:
            raise _Reject(STATUS_INVALID_UID, "request UIDs cannot be encoded")
        if opened is None or size is None:
            with temp.open("rb") as fp:
                size = os.fstat(fp.fileno()).st_size
                meta = _validate(fp, size, header_size, syntax, request_sop, request_class)
        else:
            meta = _validate(opened, size, header_size, syntax, request_sop, request_class)
            opened.close()
        meta = dataclasses.replace(meta, calling_ae=calling, size_bytes=size)
        folder = storage_dir / meta.study_uid if study_folders else storage_dir
        final = folder / f"{meta.sop_uid}.dcm"
        # Belt and braces: the UID grammar already rules out separators and '..'.
        if os.path.dirname(os.path.normpath(final)) != os.path.normpath(folder):
            raise _Reject(STATUS_INVALID_UID, "UID would leave the storage directory")
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        temp = None
        return Received(STATUS_SUCCESS, path=final, meta=meta, request_sop_uid=request_sop)
    except _Reject as reject:
        where = _quarantine_quietly(quarantine_dir, temp, reject.reason, details)
        log.warning("C-STORE quarantined (%s, 0x%04X): %s", _safe(request_sop, 80),
                    reject.status, reject.reason)
        info = _quarantine_info(reject.status, reject.reason, details, where, reject.meta, reject.readable)
        return Received(reject.status, reject.reason, where, quarantined=True,
                        request_sop_uid=request_sop, info=info)
    except OSError as exc:
        log.error("C-STORE could not be written: %s", exc)
        if temp is not None:
            temp.unlink(missing_ok=True)
        return Received(STATUS_OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}",
                        request_sop_uid=request_sop)
    except Exception as exc:  # noqa: BLE001 - the SCP must keep serving
        log.exception("C-STORE failed unexpectedly")
        reason = f"internal error: {type(exc).__name__}"
        where = _quarantine_quietly(quarantine_dir, temp, reason, details)
        info = _quarantine_info(STATUS_INTERNAL, reason, details, where, None, False)
        return Received(STATUS_INTERNAL, reason, where, quarantined=where is not None,
                        request_sop_uid=request_sop, info=info)


def _quarantine_quietly(quarantine_dir: Path, temp: Path | None, reason: str,
                        details: Mapping[str, object]) -> Path | None:
    try:
        return quarantine(quarantine_dir, temp, reason, details)
    except Exception:  # noqa: BLE001
        log.exception("could not quarantine a rejected instance")
        if temp is not None:
            temp.unlink(missing_ok=True)
        return None


# The top-level attributes `read_meta` and `_validate` look at (PS3.6 tags).
_HEADER_TAGS = frozenset({
    0x00080005,  # Specific Character Set: how the text below is encoded
    0x00080016, 0x00080018, 0x00080020, 0x00080022, 0x00080050, 0x00080060, 0x00081030,  # SOP, dates...
    0x00100010, 0x00100020, 0x00100021, 0x00100030, 0x00101002,  # patient (Other Patient IDs Sequence)
    0x0020000D, 0x0020000E, 0x00280010, 0x00280011,  # study, series, rows, columns
})
_HEADER_KEYWORDS = {tag: keyword_for_tag(tag) for tag in _HEADER_TAGS}
_HEADER_VALUE_LIMIT = 1024 * 1024  # an attribute of ours this long is not one we read


# Character sets in which a byte below 0x80 is the ASCII character (PS3.3 C.12.1.1.2,
# without code extensions): a value of such bytes alone is its own text.
_ASCII_SAFE_CHARSETS = frozenset({
    "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127",
    "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK",
})
_TEXT_VRS = frozenset({b"AE", b"CS", b"DA", b"LO", b"PN", b"SH", b"UI"})


def _header(fp: BinaryIO, top: Mapping[int, tuple[int, int, bytes | None]], *, implicit: bool,
            little: bool) -> tuple[dict[str, str], Dataset]:
    """The attributes the gateway reads, from where the structure walk found them (it has
    proven the structure, so nothing is parsed twice): plain ASCII text values decoded
    here, by keyword; anything else (another character set, several values, a sequence)
    left to pydicom in a Dataset of just those elements."""
    raw: dict[int, tuple[bytes, int, bytes | None]] = {}
    for tag in _HEADER_TAGS.intersection(top):
        where, length, vr = top[tag]
        if length == _UNDEFINED or length > _HEADER_VALUE_LIMIT:
            fp.seek(0)  # an undefined-length sequence among them: let pydicom read it all
            return {}, dcmread(fp, stop_before_pixels=True)
        fp.seek(where)
        raw[tag] = (fp.read(length), where, vr)
    charset = raw.get(0x00080005, (b"", 0, None))[0].strip(b" \x00")
    ascii_safe = charset.decode("ascii", "replace") in _ASCII_SAFE_CHARSETS
    plain: dict[str, str] = {}
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, (value, where, vr) in raw.items():
        vr_name = vr or dictionary_VR(tag).encode("ascii")
        if ascii_safe and vr_name in _TEXT_VRS and value.isascii() and not any(b in value for b in b"\\\x1b"):
            plain[_HEADER_KEYWORDS[tag]] = value.decode("ascii").strip(" \x00")
            if tag != 0x00080005:
                continue
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr.decode("ascii") if vr else None, len(value), value, where,
                                       implicit, little)
    return plain, Dataset(elements)


def _validate(fp: BinaryIO, size: int, offset: int, syntax: UID, request_sop: str,
              request_class: str) -> InstanceMeta:
    """Raise _Reject with a status and reason unless the file open as `fp` (`size` bytes,
    the data set from `offset`) is a sound instance."""
    if size == offset:
        raise _Reject(STATUS_MALFORMED, "empty data set")
    has_pixels: bool | None = None
    top: dict[int, tuple[int, int, bytes | None]] = {}
    if not syntax.is_deflated:  # a deflated data set cannot be walked without inflating
        try:
            has_pixels = check_structure(fp, offset, size, implicit=syntax.is_implicit_VR,
                                         little=syntax.is_little_endian, top=top)
        except Malformed as exc:
            raise _Reject(STATUS_MALFORMED, f"malformed data set: {exc}",
                          readable=not isinstance(exc, TooDeep)) from None
    try:
        ds: Dataset
        plain: dict[str, str] = {}
        if has_pixels is None:
            fp.seek(0)
            ds = dcmread(fp, stop_before_pixels=True)
        else:
            plain, ds = _header(fp, top, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian)
    except Exception as exc:  # noqa: BLE001 - includes RecursionError (pydicom#2330)
        raise _Reject(STATUS_MALFORMED, f"unparseable data set: {type(exc).__name__}",
                      readable=False) from None
    meta = read_meta(ds, plain, transfer_syntax=str(syntax))
    rows_and_columns = {0x00280010, 0x00280011} <= top.keys() if top else "Rows" in ds and "Columns" in ds
    if has_pixels is False and rows_and_columns:
        raise _Reject(STATUS_MALFORMED, "image without pixel data (truncated?)", meta=meta)
    missing = [name for name, value in (
        ("SOP Instance UID", meta.sop_uid),
        ("SOP Class UID", meta.sop_class_uid),
        ("Study Instance UID", meta.study_uid),
        ("Patient ID", meta.patient_id),
    ) if not value]
    if missing:
        raise _Reject(STATUS_MISSING_ATTRIBUTE, "missing " + ", ".join(missing), meta=meta)
    for name, value in (("SOP Instance UID", meta.sop_uid), ("Study Instance UID", meta.study_uid),
                        ("Series Instance UID", meta.series_uid or "0")):
        if not valid_uid(value):
            raise _Reject(STATUS_INVALID_UID, f"invalid {name} {_safe(value, 40)}", meta=meta)
    if meta.sop_uid != request_sop:
        raise _Reject(STATUS_UID_MISMATCH, "SOP Instance UID differs from the request's", meta=meta)
    if meta.sop_class_uid != request_class:
        raise _Reject(STATUS_SOP_CLASS_MISMATCH, "SOP Class UID differs from the request's", meta=meta)
    return meta


# -- the server -----------------------------------------------------------------------------

OnStored = Callable[[Path, InstanceMeta], None]
OnQuarantined = Callable[[Path, QuarantineInfo], None]
OnSenderDone = Callable[[set[str], bool], None]


@dataclass
class GatewaySCP:
    """The Storage SCP for the exchange gateway. `start()` returns at once; `stop()` ends it.

    The associations are the desk's own (app.dicom.acceptor: each sender on a thread, each
    data set written to disk as it arrives); this class is the policy: where instances go,
    what is checked (`Incoming.finish`), and whom to tell.

    `on_stored(path, meta)` runs in the association's thread after each instance is safely
    on disk; it must be thread-safe and idempotent (a sender may re-send an instance). If it
    raises, the peer gets 0xA700 (out of resources) and will normally retry later.

    `on_quarantined(path, info)` runs likewise after an instance was refused and moved to
    quarantine. The peer has its failure status whatever happens; if the callback raises,
    it is logged and the `.reason.txt` beside the file is the only record.

    `on_sender_done(study_uids, released)` runs when an association that stored instances
    ends: the studies it stored into, and whether the sender released it (it says it has
    finished) or it was aborted or dropped. The desk counts a pushed study complete only
    after a release and a quiet period (issue 8.3). Logged if it raises.
    """

    ae_title: str
    port: int
    storage_dir: Path
    quarantine_dir: Path
    on_stored: OnStored | None = None
    on_quarantined: OnQuarantined | None = None
    on_sender_done: OnSenderDone | None = None
    bind: str = "127.0.0.1"
    config: AEConfig = DEFAULT_CONFIG
    max_associations: int = 10
    fsync: bool = False
    _server: StorageServer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # Per live association (by its serial number): the studies it stored into, and the
    # temporary file made for its next instance while the sender was busy (`answered`).
    _stored_into: dict[int, set[str]] = field(default_factory=dict, init=False, repr=False)
    _spares: dict[int, tuple[Path, BinaryIO]] = field(default_factory=dict, init=False, repr=False)

    def start(self) -> GatewaySCP:
        with self._lock:
            if self._server is not None:
                return self
            self.storage_dir = Path(self.storage_dir)
            self.quarantine_dir = Path(self.quarantine_dir)
            self.storage_dir.mkdir(parents=True, exist_ok=True)
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            for stale in (self.storage_dir / ".incoming").glob("*.part"):
                stale.unlink(missing_ok=True)  # left by a crash mid-receive
            server = StorageServer(ae_title=self.ae_title, bind=self.bind, port=self.port, handler=self,
                                   config=self.config, max_associations=self.max_associations)
            server.start()
            self._server = server
            self.port = server.port
            log.info("gateway SCP %s listening on %s:%s", self.ae_title, self.bind, self.port)
            return self

    def stop(self) -> None:
        with self._lock:
            if self._server is None:
                return
            server, self._server = self._server, None
        server.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> GatewaySCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def study_dir(self, study_uid: str) -> Path:
        if not valid_uid(study_uid):
            raise ValueError("not a valid Study Instance UID")
        return Path(self.storage_dir) / study_uid

    # -- acceptor.StoreHandler ---------------------------------------------------------------

    def begin(self, request: StoreRequest) -> Incoming:
        details: dict[str, object] = {
            "calling_ae": request.calling_ae,
            "peer": request.peer,
            "affected_sop_class_uid": request.sop_class,
            "affected_sop_instance_uid": request.sop_uid,
            "received_at": datetime.now(UTC).isoformat(),
        }
        with self._lock:
            spare = self._spares.pop(request.association, None)
        return Incoming(self.storage_dir, sop_class=request.sop_class, sop_uid=request.sop_uid,
                        syntax=request.syntax, details=details, fsync=self.fsync, spare=spare)

    def answered(self, association: int) -> None:
        """Make the association's next temporary file while its sender reads its next one
        (0.2-0.3 ms a file here). Never raises: `Incoming` tries again if this failed."""
        try:
            spare = open_temp(self.storage_dir)
        except OSError:
            return
        with self._lock:
            self._spares[association] = spare

    def finish(self, request: StoreRequest, sink: Sink) -> StoreOutcome:
        """Settle the instance, then tell the desk. Never raises."""
        try:
            result = cast(Incoming, sink).finish(storage_dir=self.storage_dir, quarantine_dir=self.quarantine_dir)
            if result.ok and result.meta:
                with self._lock:
                    self._stored_into.setdefault(request.association, set()).add(result.meta.study_uid)
            if result.ok and self.on_stored is not None and result.path and result.meta:
                try:
                    self.on_stored(result.path, result.meta)
                except Exception:  # noqa: BLE001
                    log.exception("on_stored failed for a received instance")
                    result = Received(STATUS_OUT_OF_RESOURCES, "stored but not recorded; retry",
                                      result.path)
            if result.quarantined and self.on_quarantined is not None and result.path and result.info:
                try:
                    self.on_quarantined(result.path, result.info)
                except Exception:  # noqa: BLE001 - the refusal stands; the reason file remains
                    log.exception("on_quarantined failed for a refused instance")
            return StoreOutcome(result.status, result.reason)
        except Exception:  # noqa: BLE001 - last line of defence
            log.exception("C-STORE handler failed")
            return StoreOutcome(STATUS_INTERNAL, "internal error")

    def association_ended(self, association: int, released: bool) -> None:
        """The association is over; tell the desk which studies it brought and whether it
        ended by a release. Never raises."""
        with self._lock:
            studies = self._stored_into.pop(association, set())
            spare = self._spares.pop(association, None)
        if spare is not None:
            temp, out = spare
            with contextlib.suppress(OSError):
                out.close()
                temp.unlink(missing_ok=True)
        if not studies or self.on_sender_done is None:
            return
        try:
            self.on_sender_done(studies, released)
        except Exception:  # noqa: BLE001 - the instances are stored; only the hint is lost
            log.exception("on_sender_done failed")
