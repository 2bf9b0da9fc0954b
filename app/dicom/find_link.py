"""C-FIND on the desk's own association: the listings a transfer is checked against.

Why not pynetdicom's `Association` (what every C-FIND used before): before each retrieval the
source's instances are listed (SERIES, then IMAGE level per series), and after each send the
destination's, to verify the delivery (issue 8.2). A study of 600 instances is 600 pending
C-FIND responses, and pynetdicom hands each one between its reactor thread and ours and
builds each command set and identifier through pydicom: about a second of CPU per listing
(bench/receive.py's end-to-end profile, issue 15). A `FindLink` speaks the exchange on the
calling thread over a `Wire`, like `app.dicom.get_link.GetLink`: the command sets are ours
(`app.dicom.wire`); the query we send is encoded with pydicom (pynetdicom's
`dsutils.encode`), each match read whole into memory (a few hundred bytes) and decoded only
as far as the caller needs:

- `find` gives each match as a pydicom `Dataset` (names, several values, any character
  set: what a study search shows);
- `find_text` gives the query's own keys as text, read straight from the identifier's bytes
  (the character set respected): a listing of UIDs and numbers does not pay pydicom's
  ~0.2 ms per match. Anything out of the ordinary in an identifier (several values, an
  undefined length, elements out of order) is decoded by pydicom instead, in the same words.

Failures are `DicomFailure`s: the PACS silent past the DIMSE timeout, an A-ABORT, a closed
connection (`app.dicom.errors.to_failure` from an `AssociationOutcome`, as for every other
operation); a failure status as `to_failure(status, operation="find")`; a response we cannot
read (another message, a match that does not decode) aborts the association: a listing that
silently lost a match could pass a delivery that is not whole.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable
from typing import TypeVar

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import TEXT_VR_DELIMS
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from app.dicom import wire
from app.dicom.ae import AEConfig, Node
from app.dicom.errors import status_category, to_failure
from app.dicom.store_link import Link
from app.dicom.wire import ProtocolError

log = logging.getLogger(__name__)

FIND_MODEL = str(StudyRootQueryRetrieveInformationModelFind)
# A C-FIND match is a few hundred bytes; SOP Classes in Study or a long list of modalities
# a few kB. One larger than this is not a match.
LARGEST_IDENTIFIER = 1024 * 1024

T = TypeVar("T")
Match = dict[str, str]  # keyword -> text, for the keys a query asked for

# VRs `find_text` reads itself: single-valued text. A person name (PN, with its component
# groups in up to three character sets) or a sequence go through pydicom.
_LIGHT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"}
_CHARSET_VRS = {"LO", "SH"}  # the text VRs among them whose bytes follow Specific Character Set
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_TAG = struct.Struct("<HH")
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
_CHARSET_TAG = 0x00080005


class FindLink(Link):
    """One association to `node` for C-FINDs in the Study Root model (Explicit and Implicit VR
    Little Endian proposed), any number in sequence: a search's several queries, or a
    listing's SERIES query then one IMAGE query per series."""

    def __init__(self, node: Node, *, config: AEConfig) -> None:
        super().__init__(node, [(FIND_MODEL, [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)])],
                         config=config)

    def find(self, query: Dataset) -> list[Dataset]:
        """Every match of `query`, decoded by pydicom. Raises DicomFailure (see the module)."""
        return self._find(query, _decoded)

    def find_text(self, query: Dataset) -> list[Match]:
        """Every match of `query` as {keyword: text} for each key of the query (missing ones
        ""), the way `str(match.get(keyword, "") or "")` reads a decoded match. Raises
        DicomFailure (see the module)."""
        keys: dict[int, tuple[str, str]] = {}
        light = True
        for element in query:
            if element.keyword == "QueryRetrieveLevel":
                continue
            keys[int(element.tag)] = (element.keyword, element.VR)
            light = light and element.VR in _LIGHT_VRS
        if not light:
            return [_as_text(match, keys) for match in self.find(query)]

        def take(data: bytes, implicit: bool) -> Match:
            found = _read_text(data, implicit, keys)
            return found if found is not None else _as_text(_decoded(data, implicit), keys)

        return self._find(query, take)

    def _find(self, query: Dataset, take: Callable[[bytes, bool], T]) -> list[T]:
        """One C-FIND: the request, then each response to the final one; `take(identifier
        bytes, implicit VR)` of each pending match, in the order they came."""
        if self.wire is None:
            raise to_failure(self._outcome(closed_by_peer=True))
        context_id = next((cid for cid, (sop, _) in self.contexts.items() if sop == FIND_MODEL), None)
        if context_id is None:  # `open` refuses an association with no accepted context
            raise to_failure(self._outcome(no_accepted_contexts=True))
        implicit = self.contexts[context_id][1] == ImplicitVRLittleEndian
        identifier = encode(_in_its_character_set(query), implicit, True)
        if identifier is None:
            raise ValueError("the query cannot be encoded")
        message_id = self.next_message_id()
        command = self.request_command(FIND_MODEL, wire.C_FIND_RQ, message_id)
        matches: list[T] = []
        with self.exchange("search"):
            self.wire.send_message(context_id, command, identifier)
            while True:
                cid, fields = self.wire.read_command()
                if fields.field != wire.C_FIND_RSP:
                    raise ProtocolError(f"command 0x{fields.field or 0:04X} during a C-FIND")
                if cid != context_id or fields.us(wire.RESPONDED_TO) != message_id:
                    raise ProtocolError("a C-FIND response to another request")
                code = fields.us(wire.STATUS)
                if code is None:
                    raise ProtocolError("a C-FIND response without a status")
                data = self.read_small(cid, LARGEST_IDENTIFIER, "a C-FIND match") if fields.has_data_set else None
                category = status_category(code, "find")
                if category == "pending":
                    if data is not None:
                        try:
                            matches.append(take(data, implicit))
                        except Exception as exc:  # noqa: BLE001 - bytes from outside
                            raise ProtocolError(f"a match that does not decode ({type(exc).__name__})") from None
                    continue
                if category in ("success", "warning"):
                    return matches
                status = Dataset()
                status.Status = code
                comment = fields.text(wire.ERROR_COMMENT)
                if comment:
                    status.ErrorComment = comment
                break
        raise to_failure(status, operation="find")  # the exchange is over: the association stays usable

def _in_its_character_set(query: Dataset) -> Dataset:
    """`query`, declaring a Specific Character Set if it has text beyond ASCII and none of
    its own: ISO_IR 100 (Latin-1, the bytes pydicom wrote before, now labelled) when that
    holds the text, else ISO_IR 192 (UTF-8). Without one, pydicom writes a Greek family name
    as "?"s, which a PACS reads as wildcards (PS3.4 C.2.2.2.4)."""
    if "SpecificCharacterSet" in query:
        return query
    texts = [str(element.value) for element in query if element.VR not in ("SQ", "UI")]
    if all(text.isascii() for text in texts):
        return query
    copy = Dataset()  # not Dataset(query), which shares the caller's elements dict
    for element in query:
        copy.add(element)
    try:
        for text in texts:
            text.encode("latin-1")
        copy.SpecificCharacterSet = "ISO_IR 100"
    except UnicodeEncodeError:
        copy.SpecificCharacterSet = "ISO_IR 192"
    return copy


def _decoded(data: bytes, implicit: bool) -> Dataset:
    """A match decoded by pydicom, every element's value converted now: pydicom converts
    lazily, and a value that does not convert must fail here, as a protocol error."""
    found = decode(io.BytesIO(data), implicit, True)
    if found is None:
        raise ValueError("no data set")
    for _ in found:  # iterating converts each element
        pass
    return found


def _as_text(match: Dataset, keys: dict[int, tuple[str, str]]) -> Match:
    return {keyword: str(match.get(keyword, "") or "") for keyword, _ in keys.values()}


def _read_text(data: bytes, implicit: bool, keys: dict[int, tuple[str, str]]) -> Match | None:
    """The `keys` of an identifier (Little Endian, `implicit` VR or explicit) as text, read
    from its top-level elements; None when it needs pydicom: an undefined length, elements
    out of order, several values, a VR other than the dictionary's. Never raises."""
    raw: dict[int, bytes] = {}
    charset: list[str] | None = None
    pos, end, previous = 0, len(data), -1
    try:
        while pos < end:
            if implicit:
                group, element, length = _IMPLICIT.unpack_from(data, pos)
                vr = b""
                pos += 8
            else:
                group, element, vr, length = _EXPLICIT_SHORT.unpack_from(data, pos)
                pos += 8
                if vr in _LONG_VRS:
                    (length,) = _LONG_LENGTH.unpack_from(data, pos)
                    pos += 4
            tag = group << 16 | element
            if length == 0xFFFFFFFF or tag <= previous or pos + length > end:
                return None
            previous = tag
            if tag == _CHARSET_TAG:
                charset = [v.strip() for v in data[pos:pos + length].decode("latin-1").split("\\")]
            if tag in keys:
                if vr and vr.decode("latin-1") != keys[tag][1]:
                    return None
                raw[tag] = data[pos:pos + length]
            pos += length
    except struct.error:
        return None
    encodings = convert_encodings(charset) if charset else None
    found: Match = {}
    for tag, (keyword, kind) in keys.items():
        value = raw.get(tag, b"")
        if b"\\" in value:
            return None  # several values: pydicom's reading of them, not ours
        if kind in _CHARSET_VRS and encodings:
            found[keyword] = decode_bytes(value, encodings, TEXT_VR_DELIMS).rstrip("\0 ")
        else:
            found[keyword] = value.decode("latin-1").rstrip("\0 ")
    return found

