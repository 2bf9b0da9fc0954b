"""Transfer syntaxes end to end (issue 8, points 5 and 6).

5. A C-GET offers a context per syntax family, so each instance comes in the syntax it is
   stored in: JPEG 2000, JPEG-LS, RLE and Explicit VR instances go PACS A -> desk -> PACS B
   byte for byte (real Orthanc both ends).
6. A destination that refuses a file's syntax gets it converted losslessly (or, for a lossy
   original, decoded and marked as lossy); a file that cannot go in any accepted syntax
   stops the send before anything is stored.

Compressed files are made with pydicom (RLE, JPEG 2000 through pylibjpeg-openjpeg) and
DCMTK (dcmcjpls, dcmcjpeg, dcmconv): a missing DCMTK fails the test (require_binary).
"""

from __future__ import annotations

import io
import json
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import evt

from app.dicom import scu
from app.dicom.ae import COMMON_STORAGE_CLASSES, GET_SYNTAX_FAMILIES, MAX_CONTEXTS, get_contexts, get_plan
from app.dicom.convert import convert
from app.dicom.store_link import read_part10
from app.dicom.synth import make_study
from tests.dicom_peers import QUICK, OrthancPeer, StoreSCP, require_binary
from tests.test_store_link import data_set_bytes

pytestmark = pytest.mark.timeout(180)

CT = "1.2.840.10008.5.1.4.1.1.2"


def plain_study(folder: Path, n: int, **kwargs) -> list[Path]:
    options = dict(patient_id="SYNTAX-1", patient_name="SYNTAX^TEST", birth_date="19700101",
                   study_date="20240315", n_series=1, n_per_series=n, rows=64, cols=64)
    options.update(kwargs)
    return make_study(folder, **options)


def recode(path: Path, syntax: str) -> Path:
    """Re-file an instance in `syntax`, in place: pydicom where it has an encoder, DCMTK else."""
    dcmtk = {
        JPEGLSLossless: ["dcmcjpls", "+el"],
        JPEGLSNearLossless: ["dcmcjpls", "+en"],  # NEAR 2
        JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
        JPEGBaseline8Bit: ["dcmcjpeg", "+eb"],
        ExplicitVRBigEndian: ["dcmconv", "+tb"],
        DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
    }
    if syntax == ExplicitVRLittleEndian:
        pass  # what make_study writes
    elif syntax in dcmtk:
        tool, *options = dcmtk[syntax]
        out = path.with_suffix(".tmp")
        subprocess.run([require_binary(tool, "dcmtk"), *options, str(path), str(out)], check=True,
                       capture_output=True)
        out.replace(path)
    else:
        ds = dcmread(path)
        if syntax == JPEG2000:
            ds.compress(JPEG2000, j2k_cr=[10])
        else:
            ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    assert read_part10(path).syntax == syntax
    return path


def pixels(data: bytes | Path) -> np.ndarray:
    ds = dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)
    return ds.pixel_array


# -- 5. C-GET contexts -----------------------------------------------------------------------------


def test_a_study_of_a_few_classes_gets_a_context_per_syntax_and_every_class_some():
    plan = get_plan([CT])
    assert len(plan) == MAX_CONTEXTS - 1  # one goes to the Get model
    every_syntax = {ts for family in GET_SYNTAX_FAMILIES for ts in family}
    assert {ts for uid, (ts, *more) in plan if uid == CT and not more} == every_syntax
    per_class = Counter(uid for uid, _ in plan)
    assert set(per_class) == {CT, *COMMON_STORAGE_CLASSES}  # the safety net for the rest
    for uid in per_class:  # every class can come uncompressed, whatever else it gets
        assert {"1.2.840.10008.1.2.1"} & {ts for u, family in plan if u == uid for ts in family}
    contexts, roles = get_contexts([CT])
    assert len(contexts) == MAX_CONTEXTS and len(roles) == len(per_class)


def test_when_classes_are_many_each_keeps_an_uncompressed_context_first():
    many = [f"1.2.826.0.1.3680043.9.9999.{i}" for i in range(40)]
    plan = get_plan(many)
    assert len(plan) == MAX_CONTEXTS - 1
    assert {uid for uid, family in plan if family == GET_SYNTAX_FAMILIES[0]} == set(many)
    assert {uid for uid, _ in plan} == set(many)  # no safety-net class before the study's own
    assert len(get_plan([f"1.2.3.{i}" for i in range(300)])) == MAX_CONTEXTS - 1


def upload(peer: OrthancPeer, path: Path) -> str:
    """POST a file to Orthanc's REST API as it is; return its Orthanc id."""
    request = urllib.request.Request(f"http://127.0.0.1:{peer.http_port}/instances",
                                     data=path.read_bytes(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as rsp:  # noqa: S310 - an http:// URL to the local peer, built here
        return json.loads(rsp.read())["ID"]


def stored_file(peer: OrthancPeer, sop_uid: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{peer.http_port}/tools/lookup",
                                     data=sop_uid.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as rsp:  # noqa: S310 - an http:// URL to the local peer, built here
        (hit,) = [h for h in json.loads(rsp.read()) if h["Type"] == "Instance"]
    with urllib.request.urlopen(f"http://127.0.0.1:{peer.http_port}/instances/{hit['ID']}/file",
                                timeout=10) as rsp:
        return rsp.read()


def test_a_mixed_syntax_study_goes_pacs_to_pacs_byte_for_byte(orthanc: OrthancPeer, orthanc_factory,
                                                               tmp_path: Path) -> None:
    syntaxes = [JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian, JPEG2000,
                JPEGLSNearLossless]
    paths = plain_study(tmp_path / "src", len(syntaxes), patient_id="SYNTAX-GET")
    for path, syntax in zip(paths, syntaxes, strict=True):
        recode(path, syntax)
        upload(orthanc, path)
    originals = {read_part10(p).sop_uid: p for p in paths}
    study_uid = dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    got = scu.retrieve_study(orthanc.node, study_uid, tmp_path / "got", config=QUICK)
    assert got.ok and len(got.files) == len(paths), (got.failed_uids, got.note)
    for path in got.files:
        original = originals[read_part10(path).sop_uid]
        assert read_part10(path).syntax == read_part10(original).syntax  # meta: the accepted context's
        assert data_set_bytes(path) == data_set_bytes(original), f"{read_part10(original).syntax} changed"

    pacs_b = orthanc_factory()
    sent = scu.send_files(pacs_b.node, got.files, config=QUICK)
    assert sent.ok and sent.associations == 1  # nothing to convert: the fast path only
    for uid, original in originals.items():
        at_b = stored_file(pacs_b, uid)
        assert at_b[128:132] == b"DICM"
        copy = tmp_path / f"b-{uid}.dcm"
        copy.write_bytes(at_b)
        assert read_part10(copy).syntax == read_part10(original).syntax
        assert data_set_bytes(copy) == data_set_bytes(original), f"{read_part10(original).syntax} changed at B"


# -- 6. a destination that refuses a syntax ----------------------------------------------------------


def uncompressed_only(fake_scp, arrived: dict[str, bytes]):
    """A pynetdicom SCP taking Explicit/Implicit VR Little Endian only; keeps what arrives."""

    def handle(event):
        arrived[event.request.AffectedSOPInstanceUID] = event.encoded_dataset()  # with file meta
        return 0x0000

    return fake_scp([(evt.EVT_C_STORE, handle)], max_pdu=65536,
                    transfer_syntaxes=[ExplicitVRLittleEndian, ImplicitVRLittleEndian])


def test_refused_syntaxes_arrive_converted_with_the_original_pixels(fake_scp, tmp_path: Path) -> None:
    syntaxes = [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, ExplicitVRBigEndian,
                DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian]
    paths = plain_study(tmp_path / "src", len(syntaxes))
    for path, syntax in zip(paths, syntaxes, strict=True):
        recode(path, syntax)
    arrived: dict[str, bytes] = {}
    work = tmp_path / "work"
    result = scu.send_files(uncompressed_only(fake_scp, arrived), paths, config=QUICK, workdir=work)
    assert result.ok and result.sent == len(paths)
    assert result.associations == 2  # released while converting, then the send
    assert list(work.iterdir()) == []  # the conversions are gone
    for path in paths:
        uid = read_part10(path).sop_uid
        ds = dcmread(io.BytesIO(arrived[uid]))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, pixels(path)), read_part10(path).syntax
        assert "LossyImageCompression" not in ds
    plain = paths[-1]  # its own syntax was accepted: sent from disk, untouched
    assert dcmread(io.BytesIO(arrived[read_part10(plain).sop_uid])).file_meta.TransferSyntaxUID == \
        ExplicitVRLittleEndian
    copy = tmp_path / "plain.dcm"
    copy.write_bytes(arrived[read_part10(plain).sop_uid])
    assert data_set_bytes(copy) == data_set_bytes(plain)


def test_an_instance_that_cannot_be_converted_stops_the_send_and_says_which_and_why(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    good, corrupt, video, j2k = plain_study(tmp_path / "src", 4)
    recode(j2k, JPEG2000Lossless)
    recode(corrupt, JPEG2000Lossless)
    ds = dcmread(corrupt)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # the codestream cut short
    ds.save_as(corrupt, enforce_file_format=True)
    ds = dcmread(video)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])  # no MPEG2 decoder here
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(video, enforce_file_format=True)

    with pytest.raises(scu.DicomFailure) as caught:
        scu.send_files(storescp.node, [good, corrupt, video, j2k], config=QUICK, workdir=tmp_path / "work")
    assert storescp.files() == []  # nothing stored, not even the good ones
    failure = caught.value
    assert failure.code == "syntax-refused" and not failure.retryable
    assert set(failure.failed_uids) == {read_part10(corrupt).sop_uid, read_part10(video).sop_uid}
    assert f"{read_part10(corrupt).sop_uid}: JPEG 2000 Image Compression (Lossless Only), and the " \
           "destination accepts only uncompressed data: this instance cannot be decoded" in failure.plain
    assert f"{read_part10(video).sop_uid}: MPEG2 Main Profile / Main Level, and the destination accepts " \
           "only uncompressed data: there is no decoder for it here" in failure.plain
    assert list((tmp_path / "work").iterdir()) == []


def test_a_lossy_jpeg_is_decoded_for_a_node_that_wants_it_uncompressed_and_still_says_lossy(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    (path,) = plain_study(tmp_path / "src", 1, bits=8)
    recode(path, JPEGBaseline8Bit)
    ds = dcmread(path)
    if "LossyImageCompression" in ds:  # start from a file that does not say it itself
        del ds.LossyImageCompression
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
    result = scu.send_files(storescp.node, [path], config=QUICK)
    assert result.ok
    (received,) = storescp.files()
    ds = dcmread(received)
    assert ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    assert np.array_equal(ds.pixel_array, pixels(path))  # what a viewer of the original shows


@pytest.mark.parametrize(("near", "lossy"), [(0, False), (2, True)], ids=["near-0-is-lossless", "near-2-is-lossy"])
def test_jpeg_ls_near_lossless_counts_as_lossy_unless_every_scan_says_near_0(tmp_path: Path, near, lossy) -> None:
    (path,) = plain_study(tmp_path / "src", 1)
    out = tmp_path / "jls.dcm"
    out.write_bytes(path.read_bytes())
    if near:
        recode(out, JPEGLSNearLossless)  # dcmcjpls +en: NEAR 2
    else:  # dcmcjpls will not write NEAR 0 as near-lossless: a lossless codestream is one
        recode(out, JPEGLSLossless)
    ds = dcmread(out)
    ds.file_meta.TransferSyntaxUID = JPEGLSNearLossless
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(out, enforce_file_format=True)
    done = convert(out, ExplicitVRLittleEndian, tmp_path / "plain.dcm")
    assert done.lossy is lossy
    again = dcmread(done.path)
    assert ("LossyImageCompression" in again) is lossy
    if not lossy:
        assert np.array_equal(again.pixel_array, pixels(path))


def test_a_truncated_frame_is_refused_even_with_weasyprint_loaded(tmp_path: Path) -> None:
    """WeasyPrint makes Pillow load truncated images (process-wide); a conversion must not
    turn a JPEG 2000 frame cut short into an image of garbage."""
    import weasyprint  # noqa: F401 - sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True
    from PIL import ImageFile

    from app.dicom.convert import CannotConvert

    assert ImageFile.LOAD_TRUNCATED_IMAGES
    (corrupt,) = plain_study(tmp_path / "src", 1)
    recode(corrupt, JPEG2000Lossless)
    ds = dcmread(corrupt)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(corrupt, enforce_file_format=True)
    with pytest.raises(CannotConvert, match="cannot be decoded"):
        convert(corrupt, ExplicitVRLittleEndian, tmp_path / "out.dcm")
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # left as WeasyPrint wants it
