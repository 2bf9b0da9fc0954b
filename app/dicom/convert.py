"""Re-encode one Part 10 file in an uncompressed transfer syntax a destination accepts.

Used by `app.dicom.scu.send_files` only for the files whose own syntax the destination
refused; every other file goes from disk untouched. No Flask here.

The policy, per source syntax (PS3.5 Section 10 and Annex A.4):
* uncompressed (Implicit/Explicit VR Little Endian, Deflated, Explicit VR Big Endian) ->
  the accepted uncompressed syntax: lossless by construction (Big Endian values of VR
  OW/OF/OL/OD/OV are byte-swapped; a UN element in Big Endian cannot be swapped safely, so
  such a file is refused);
* lossless compression (JPEG Lossless .57/.70, JPEG-LS .80, JPEG 2000 .90, HTJ2K
  .201/.202, RLE .5) -> decoded with pydicom's pixel handlers (pylibjpeg plugins): the
  decoded pixels are the original ones, and we check the written file gives them back;
* lossy compression (JPEG .50/.51, JPEG-LS near-lossless .81 unless every frame says
  NEAR=0, JPEG 2000 .91, HTJ2K .203): decoded too — that loses nothing more than the
  compression already did — but never so as to hide it: Lossy Image Compression (0028,2110)
  is set to "01" and, unless the file already records its compression, its ratio (computed
  from the frame sizes) and method are added (PS3.3 C.7.6.1.1.5). A file that already says
  "01" keeps its ratio and method as they are;
* anything without a decoder here (MPEG2, H.264, HEVC, JPEG 2000 Part 2, ...), and any file
  whose frames do not decode, raises CannotConvert with the reason in plain words.
"""

from __future__ import annotations

import array
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

__all__ = ["UNCOMPRESSED", "CannotConvert", "Converted", "convert", "refusal"]

# What we convert to, in order of preference.
UNCOMPRESSED: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
           ExplicitVRBigEndian}

# Lossy syntaxes and the Lossy Image Compression Method (0028,2114) defined term of each
# (PS3.3 C.7.6.1.1.5.1).
LOSSY_METHOD: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000
    "1.2.840.10008.1.2.4.93": "ISO_15444_2",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K
}

_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_ARRAY_CODE = {2: "H", 4: "I", 8: "Q"}  # itemsizes 2, 4, 8 on the platforms we run on


class CannotConvert(Exception):
    """This file cannot be re-encoded in the wanted syntax; `reason` says why, plainly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Converted:
    path: Path
    source_syntax: str
    target_syntax: str
    lossy: bool  # the source was lossy-compressed: Lossy Image Compression says "01"


def _name(syntax: str) -> str:
    name = UID(syntax).name
    return name if name != syntax else f"transfer syntax {syntax}"


def refusal(source: str, targets: list[str] | tuple[str, ...]) -> str | None:
    """Why a file in `source` cannot be converted to any of `targets`, without reading it;
    None when it can be tried (decoding may still fail: `convert` says so then)."""
    usable = [t for t in targets if t in UNCOMPRESSED]
    if not usable:
        accepted = ", ".join(_name(t) for t in targets) or "nothing we can convert to"
        return (f"{_name(source)}, and the destination accepts only {accepted} for it: we convert "
                "only to uncompressed")
    if source in _NATIVE:
        return None
    try:
        available = get_decoder(UID(source)).is_available
    except NotImplementedError:
        available = False
    if not available:
        return (f"{_name(source)}, and the destination accepts only uncompressed data: there is "
                "no decoder for it here")
    return None


def convert(source: Path, target: str, out: Path) -> Converted:
    """Write `source` re-encoded in `target` (an UNCOMPRESSED syntax) to `out`.

    Raises CannotConvert with the reason (see the module docstring)."""
    if target not in UNCOMPRESSED:
        raise ValueError(f"not a syntax we convert to: {target}")
    try:
        ds = dcmread(source)
    except Exception as exc:  # noqa: BLE001 - a file from outside; RecursionError included
        raise CannotConvert(f"the file cannot be read ({type(exc).__name__})") from None
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    reason = refusal(syntax, [target])
    if reason:
        raise CannotConvert(reason)
    lossy = False
    decoded = None
    if syntax == ExplicitVRBigEndian:
        _swap_to_little_endian(ds)
    elif syntax not in _NATIVE and "PixelData" in ds:
        lossy = _is_lossy(ds, syntax)
        compressed = sum(len(f) for f in _frames(ds))
        try:
            # The samples as coded (no colour conversion of ours), and the same instance: a
            # change of transfer syntax keeps the SOP Instance UID (pydicom would make a new one).
            with _strict_pillow():
                ds.decompress(as_rgb=False, generate_instance_uid=False)
                decoded = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder error: corrupt or unsupported data
            raise CannotConvert(f"{_name(syntax)}, and the destination accepts only uncompressed "
                                f"data: this instance cannot be decoded ({_short(exc)})") from None
        if lossy:
            _mark_lossy(ds, syntax, len(ds.PixelData) / compressed if compressed else 0.0)
    ds.file_meta.TransferSyntaxUID = UID(target)
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - odd values that cannot be re-encoded
        out.unlink(missing_ok=True)
        raise CannotConvert(f"it cannot be re-encoded in {_name(target)} ({_short(exc)})") from None
    if decoded is not None:  # belt and braces: what we wrote decodes to what we decoded
        again = dcmread(out).pixel_array
        if again.shape != decoded.shape or not (again == decoded).all():
            out.unlink(missing_ok=True)
            raise CannotConvert("the decoded pixel data did not survive re-encoding")
    return Converted(out, syntax, target, lossy)


@contextmanager
def _strict_pillow() -> Iterator[None]:
    """Pillow (one of pydicom's decoders) refuses truncated data while we decode.

    WeasyPrint sets Pillow's process-wide `ImageFile.LOAD_TRUNCATED_IMAGES = True` when it is
    imported (weasyprint/images.py), and the worker imports it for reports: Pillow would then
    "decode" a JPEG 2000 frame cut short into an image of garbage, and the desk would deliver
    it as if it were the original. Conversions run one at a time in a worker process.
    """
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:160] + "...") if len(text) > 160 else (text or type(exc).__name__)


def _frames(ds: Dataset) -> list[bytes]:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    except Exception as exc:  # noqa: BLE001 - broken encapsulation
        raise CannotConvert(f"its compressed pixel data is malformed ({_short(exc)})") from None


def _is_lossy(ds: Dataset, syntax: str) -> bool:
    """Whether decoding gives anything but the original pixels. JPEG-LS near-lossless with
    NEAR=0 in every scan of every frame is lossless (ISO 14495-1 C.2.3); every other syntax
    in LOSSY_METHOD counts as lossy, whatever the file says."""
    if syntax == "1.2.840.10008.1.2.4.81":
        nears = [near for frame in _frames(ds) for near in _jpegls_nears(frame)]
        return not nears or any(nears)
    return syntax in LOSSY_METHOD


def _jpegls_nears(frame: bytes) -> list[int]:
    """NEAR of each JPEG-LS scan: the byte after the component list of each SOS (FFDA)
    marker segment. FF DA cannot occur inside JPEG-LS coded data (bit stuffing after FF)."""
    nears = []
    pos = frame.find(b"\xff\xda")
    while pos >= 0 and pos + 5 <= len(frame):
        (count,) = struct.unpack_from("B", frame, pos + 4)
        at = pos + 5 + 2 * count
        if at >= len(frame):
            break
        nears.append(frame[at])
        pos = frame.find(b"\xff\xda", at)
    return nears


def _mark_lossy(ds: Dataset, syntax: str, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: say the image was lossy-compressed; add this compression's ratio
    and method unless the file already records a lossy history."""
    said = str(ds.get("LossyImageCompression", "") or "")
    ds.LossyImageCompression = "01"
    if said == "01" and ("LossyImageCompressionMethod" in ds or "LossyImageCompressionRatio" in ds):
        return
    method = LOSSY_METHOD.get(syntax, "")
    ds.LossyImageCompressionRatio = [f"{ratio:.2f}"[:16]] if ratio else []
    if method:
        ds.LossyImageCompressionMethod = [method]


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap the raw values pydicom keeps as read (OW/OF/OL/OD/OV), throughout the data
    set, so that writing it Little Endian is lossless (pydicom does not do it: its dcmwrite
    docs). Raises CannotConvert on a UN element, whose value's layout we cannot know."""

    def walk(dataset: Dataset) -> None:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR == "UN" and elem.value:
                raise CannotConvert(f"Explicit VR Big Endian with an element of unknown VR "
                                    f"{elem.tag}: it cannot be converted safely")
            elif elem.VR in _SWAP_WIDTH and isinstance(elem.value, bytes | bytearray) and elem.value:
                width = _SWAP_WIDTH[elem.VR]
                if len(elem.value) % width:
                    raise CannotConvert(f"Explicit VR Big Endian with an odd-sized {elem.VR} "
                                        f"element {elem.tag}")
                elem.value = _swap(bytes(elem.value), width)
            elif elem.VR in _SWAP_WIDTH and isinstance(elem.value, list | MultiValue):
                raise CannotConvert(f"Explicit VR Big Endian with a multi-valued {elem.VR} "
                                    f"element {elem.tag}")

    walk(ds)


def _swap(data: bytes, width: int) -> bytes:
    values = array.array(_ARRAY_CODE[width], data)
    values.byteswap()
    return values.tobytes()
