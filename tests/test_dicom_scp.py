"""The gateway Storage SCP: real DCMTK storescu pushes, malformed input, and the
structure check that catches what pydicom would silently accept."""

from __future__ import annotations

import gc
import io
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import build_context

from app.dicom import scu
from app.dicom.ae import Node, open_association
from app.dicom.errors import DicomFailure
from app.dicom.scp import (
    MAX_SEQUENCE_DEPTH,
    STATUS_INVALID_UID,
    STATUS_MALFORMED,
    STATUS_MISSING_ATTRIBUTE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_UID_MISMATCH,
    GatewaySCP,
    InstanceMeta,
    Malformed,
    TooDeep,
    check_structure,
    valid_uid,
)
from app.dicom.store_link import StoreLink, read_part10
from app.dicom.synth import make_study
from tests.dicom_peers import QUICK, rss_kb, run_storescu

pytestmark = pytest.mark.timeout(120)

AET = "IEPGATEWAY"


class Gateway:
    """A running GatewaySCP on a free port with what on_stored saw."""

    def __init__(self, root: Path) -> None:
        self.stored: list[tuple[Path, InstanceMeta]] = []
        self.fail_on_stored = False
        self.scp = GatewaySCP(AET, 0, root / "inbox", root / "quarantine", on_stored=self._on_stored)
        self.scp.start()
        self.node = Node(AET, "127.0.0.1", self.scp.port)

    def _on_stored(self, path: Path, meta: InstanceMeta) -> None:
        if self.fail_on_stored:
            raise RuntimeError("database down")
        self.stored.append((path, meta))

    def files(self) -> list[Path]:
        return sorted(self.scp.storage_dir.rglob("*.dcm"))

    def reasons(self) -> list[str]:
        return [p.read_text() for p in sorted(self.scp.quarantine_dir.glob("*.reason.txt"))]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "gw")
    yield gw
    gw.scp.stop()


def study(folder: Path, patient_id: str = "GW-1", **kwargs) -> list[Path]:
    options = dict(patient_name="SENDER^NAME", birth_date="19611224", study_date="20240301",
                   n_series=1, n_per_series=2, accession="GWACC")
    options.update(kwargs)
    return make_study(folder, patient_id=patient_id, **options)


def store(node: Node, *items: Dataset | Path) -> list[Dataset]:
    """C-STORE each item on one association: files byte for byte through the desk's own
    sender (malformed ones included), Datasets through pynetdicom (which encodes them)."""
    if all(isinstance(item, Path) for item in items):
        parts = [read_part10(item) for item in items]
        with StoreLink(node, sorted({(p.sop_class, p.syntax) for p in parts}), config=QUICK) as link:
            return [link.store(item, part, link.context_for(part.sop_class, part.syntax))
                    for item, part in zip(items, parts, strict=True)]
    pairs = []
    for item in items:
        meta = item.file_meta if isinstance(item, Dataset) else read_file_meta_info(item)
        pairs.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    contexts = [build_context(sop, [syntax]) for sop, syntax in sorted(set(pairs))]
    with open_association(node, contexts, config=QUICK) as (assoc, _):
        return [assoc.send_c_store(item) for item in items]


# -- the happy path, with DCMTK as the sender -------------------------------------------------


def test_storescu_push_lands_on_disk_by_uid_and_on_stored_runs_per_instance(gateway: Gateway, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", n_series=2, n_per_series=3)
    done = run_storescu(gateway.node, paths)
    assert done.returncode == 0, done.stdout + done.stderr

    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    study_uid = next(iter(originals.values())).StudyInstanceUID
    assert [p.relative_to(gateway.scp.storage_dir) for p in gateway.files()] == sorted(
        Path(study_uid) / f"{uid}.dcm" for uid in originals
    )
    assert len(gateway.stored) == 6
    for path, meta in gateway.stored:
        original = originals[meta.sop_uid]
        assert path == gateway.scp.storage_dir / study_uid / f"{meta.sop_uid}.dcm"
        assert (meta.patient_id, meta.patient_name, meta.birth_date) == ("GW-1", "SENDER^NAME", "19611224")
        assert (meta.accession, meta.study_date, meta.modality, meta.acquisition_date) == (
            "GWACC", "20240301", "CT", "20240301")
        assert meta.study_uid == study_uid and meta.series_uid == original.SeriesInstanceUID
        assert meta.calling_ae == "DCMTKSCU"
        received = dcmread(path)
        assert received.PixelData == original.PixelData
        assert received.PatientID == original.PatientID
    assert gateway.reasons() == []
    assert not any((gateway.scp.storage_dir / ".incoming").iterdir())


def test_echo_answers_and_a_wrong_called_ae_title_is_refused(gateway: Gateway) -> None:
    assert scu.echo(gateway.node, config=QUICK) >= 0
    with pytest.raises(DicomFailure) as caught:
        scu.echo(Node("SOMEBODYELSE", "127.0.0.1", gateway.node.port), config=QUICK)
    assert caught.value.code == "rejected-called-aet"


def test_a_resent_instance_overwrites_its_earlier_copy(gateway: Gateway, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", n_per_series=1)
    for _ in range(2):
        assert run_storescu(gateway.node, paths).returncode == 0
    assert len(gateway.files()) == 1 and len(gateway.stored) == 2


# -- malformed input: quarantined with a reason, never a crash ----------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # bad UIDs on purpose
def test_a_path_traversal_sop_uid_is_quarantined_and_the_next_instance_stored(gateway: Gateway, tmp_path: Path) -> None:
    good, evil = study(tmp_path / "src", n_per_series=2)
    ds = dcmread(evil)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../etc/x"
    ds.save_as(tmp_path / "evil.dcm")
    run_storescu(gateway.node, [tmp_path / "evil.dcm", good])  # DCMTK sends it as it is

    assert [meta.sop_uid for _, meta in gateway.stored] == [dcmread(good).SOPInstanceUID]
    (reason,) = gateway.reasons()
    assert reason.startswith("reason: invalid SOP Instance UID '../../etc/x'")
    assert "calling_ae: 'DCMTKSCU'" in reason
    assert not list(tmp_path.rglob("x")) and not (tmp_path / "gw" / "etc").exists()
    assert len(list(gateway.scp.quarantine_dir.glob("*.dcm"))) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # bad UIDs on purpose
def test_statuses_for_malformed_instances_cite_the_reason(gateway: Gateway, tmp_path: Path) -> None:
    a, b, c = study(tmp_path / "src", n_per_series=3)
    no_patient = dcmread(a)
    del no_patient.PatientID
    bad_study = dcmread(b)
    bad_study.StudyInstanceUID = "1.2.3.abc"
    statuses = store(gateway.node, no_patient, bad_study, c)

    assert [s.Status for s in statuses] == [STATUS_MISSING_ATTRIBUTE, STATUS_INVALID_UID, 0x0000]
    assert statuses[0].ErrorComment == "missing Patient ID"
    assert sorted(r.splitlines()[0] for r in gateway.reasons()) == [
        "reason: invalid Study Instance UID '1.2.3.abc'",
        "reason: missing Patient ID",
    ]
    assert len(gateway.stored) == 1


def test_a_truncated_data_set_is_quarantined_not_stored(gateway: Gateway, tmp_path: Path) -> None:
    # DCMTK's storescu refuses to send a truncated file, so the desk's own sender sends the
    # raw bytes (StoreLink: from the file, undecoded) — as a broken sender or network would.
    paths = study(tmp_path / "src", n_per_series=2)
    data = paths[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    result = scu.send_files(gateway.node, [tmp_path / "cut.dcm", paths[1]], config=QUICK)

    assert result.sent == 1
    (failure,) = result.failed
    assert failure.code == f"status-0x{STATUS_MALFORMED:04X}"
    assert "could not understand the data set" in failure.plain and not failure.retryable
    (reason,) = gateway.reasons()
    assert "truncated" in reason.splitlines()[0]
    assert [m.sop_uid for _, m in gateway.stored] == [dcmread(paths[1]).SOPInstanceUID]


def test_an_image_cut_exactly_before_its_pixel_data_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_per_series=1)
    with path.open("rb") as fp:
        dcmread(fp, stop_before_pixels=True)
        boundary = fp.tell()
    (tmp_path / "nopixels.dcm").write_bytes(path.read_bytes()[:boundary])
    (status,) = store(gateway.node, tmp_path / "nopixels.dcm")
    assert status.Status == STATUS_MALFORMED
    assert "image without pixel data" in gateway.reasons()[0]


def test_garbage_after_a_valid_file_meta_is_quarantined(gateway: Gateway, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_per_series=1)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    (tmp_path / "garbage.dcm").write_bytes(raw[:meta_end] + bytes(range(256)) * 40)
    (status,) = store(gateway.node, tmp_path / "garbage.dcm")
    assert status.Status == STATUS_MALFORMED
    assert gateway.stored == []
    assert scu.echo(gateway.node, config=QUICK) >= 0  # still serving


def test_a_data_set_whose_uid_differs_from_the_request_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    (path,) = study(tmp_path / "src", n_per_series=1)
    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # the request carries this one
    ds.save_as(tmp_path / "mismatch.dcm")
    (status,) = store(gateway.node, tmp_path / "mismatch.dcm")
    assert status.Status == STATUS_UID_MISMATCH


def test_when_on_stored_fails_the_sender_is_told_to_retry_and_the_scp_keeps_serving(
    gateway: Gateway, tmp_path: Path
) -> None:
    a, b = study(tmp_path / "src", n_per_series=2)
    gateway.fail_on_stored = True
    (status,) = store(gateway.node, a)
    assert status.Status == STATUS_OUT_OF_RESOURCES
    gateway.fail_on_stored = False
    assert [s.Status for s in store(gateway.node, a, b)] == [0, 0]
    assert len(gateway.stored) == 2


def test_many_associations_leave_no_threads_behind(gateway: Gateway, tmp_path: Path) -> None:
    paths = study(tmp_path / "src", n_per_series=2)
    baseline = threading.active_count()
    for _ in range(25):
        assert [s.Status for s in store(gateway.node, *paths)] == [0, 0]
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline
    assert len(gateway.files()) == 2 and len(gateway.stored) == 50


# -- the structure walk and the UID grammar ------------------------------------------------------


def test_every_cut_inside_an_element_is_caught(tmp_path: Path) -> None:
    (path,) = study(tmp_path, n_per_series=1, extra={"OtherPatientIDsSequence": [Dataset()]})
    raw = path.read_bytes()
    start = 132 + 12 + int.from_bytes(raw[140:144], "little")
    assert check_structure(io.BytesIO(raw), start, len(raw), implicit=False, little=True) is True

    boundaries = {start}
    pos = start
    while pos < len(raw):  # explicit VR LE top-level walk (synth writes defined lengths)
        vr = raw[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"):
            pos += 12 + int.from_bytes(raw[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(raw[pos + 6:pos + 8], "little")
        boundaries.add(pos)
    cuts = [c for c in range(start + 1, len(raw), 1 if len(raw) < 4000 else 7) if c not in boundaries]
    cuts = [c for c in cuts if c < start + 2000] + [c for c in cuts if c >= start + 2000][::50]
    for cut in cuts:
        with pytest.raises(Malformed):
            check_structure(io.BytesIO(raw[:cut]), start, cut, implicit=False, little=True)


def test_undefined_length_sequences_and_delimiters_are_walked() -> None:
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x20\x00LO\x02\x00AB" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq = b"\x10\x00\x02\x10SQ\x00\x00\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert check_structure(io.BytesIO(seq), 0, len(seq), implicit=False, little=True) is False
    for broken in (seq[:-8], seq[:-16] + seq[-8:], seq.replace(b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", 1)):
        with pytest.raises(Malformed):
            check_structure(io.BytesIO(broken), 0, len(broken), implicit=False, little=True)


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    depth = 200
    opening = b"\x10\x00\x02\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data = opening * depth + closing * depth
    with pytest.raises(Malformed, match="nested deeper"):
        check_structure(io.BytesIO(data), 0, len(data), implicit=False, little=True)


# Issue 8 point 11: the depth limit holds whatever the length encoding. pydicom parses a
# defined-length sequence only when it is first used, so nesting hidden there passed the
# old walk and surfaced later as RecursionError; every mix is walked now.
_CONTENT_SEQUENCE = (0x0040, 0xA730)  # SQ in the dictionary (implicit VR finds it there)
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


def nested_sequences(depth: int, *, implicit: bool, sequences: str, items: str,
                     tag: tuple[int, int] = _CONTENT_SEQUENCE) -> bytes:
    """`depth` sequences, each the only element of the single item of the one around it.

    `sequences` and `items` are "defined", "undefined" or "mixed" (alternating by level)."""
    def undefined(kind: str, level: int) -> bool:
        return kind == "undefined" or (kind == "mixed" and level % 2 == 1)

    inner = struct.pack("<HH", 0x0008, 0x0100) + (b"\x02\x00\x00\x00" if implicit else b"SH\x02\x00") + b"AB"
    for level in range(depth):
        if undefined(items, level):
            item = _ITEM + struct.pack("<I", _UNDEFINED) + inner + _ITEM_END
        else:
            item = _ITEM + struct.pack("<I", len(inner)) + inner
        if undefined(sequences, level + 1):
            value, length = item + _SEQUENCE_END, _UNDEFINED
        else:
            value, length = item, len(item)
        vr = b"" if implicit else b"SQ\x00\x00"
        inner = struct.pack("<HH", *tag) + vr + struct.pack("<I", length) + value
    return inner


def nested_instance(folder: Path, depth: int, *, implicit: bool, sequences: str, items: str) -> Path:
    """A Part 10 file (no pixel data) whose last element holds `depth` nested sequences."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "NEST^DEPTH"
    ds.PatientID = "NEST-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"depth{depth}.dcm"
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as out:  # (0040,A730) sorts after every element above
        out.write(nested_sequences(depth, implicit=implicit, sequences=sequences, items=items))
    return path


ENCODINGS = [
    (implicit, sequences, items)
    for implicit in (True, False)
    for sequences in ("defined", "undefined", "mixed")
    for items in ("defined", "undefined", "mixed")
]


@pytest.mark.parametrize(
    ("implicit", "sequences", "items"), ENCODINGS,
    ids=[f"{'implicit' if i else 'explicit'}_vr-{s}_sequences-{t}_items" for i, s, t in ENCODINGS],
)
def test_the_nesting_limit_holds_for_every_length_encoding(implicit: bool, sequences: str, items: str) -> None:
    for depth in (1, MAX_SEQUENCE_DEPTH):
        data = nested_sequences(depth, implicit=implicit, sequences=sequences, items=items)
        assert check_structure(io.BytesIO(data), 0, len(data), implicit=implicit, little=True) is False
    for depth in (MAX_SEQUENCE_DEPTH + 1, 400):
        data = nested_sequences(depth, implicit=implicit, sequences=sequences, items=items)
        with pytest.raises(TooDeep, match=f"nested deeper than {MAX_SEQUENCE_DEPTH}"):
            check_structure(io.BytesIO(data), 0, len(data), implicit=implicit, little=True)


@pytest.mark.parametrize(
    ("implicit", "sequences", "items"),
    [(True, "defined", "defined"), (False, "defined", "defined"), (True, "mixed", "undefined"),
     (False, "undefined", "mixed"), (True, "undefined", "undefined"), (False, "mixed", "defined")],
    ids=["implicit_vr-defined-defined", "explicit_vr-defined-defined", "implicit_vr-mixed-undefined",
         "explicit_vr-undefined-mixed", "implicit_vr-undefined-undefined", "explicit_vr-mixed-defined"],
)
def test_the_gateway_refuses_nesting_past_the_limit_and_accepts_it_at_the_limit(
    gateway: Gateway, tmp_path: Path, implicit: bool, sequences: str, items: str
) -> None:
    too_deep = nested_instance(tmp_path / "deep", MAX_SEQUENCE_DEPTH + 1, implicit=implicit,
                               sequences=sequences, items=items)
    at_limit = nested_instance(tmp_path / "ok", MAX_SEQUENCE_DEPTH, implicit=implicit,
                               sequences=sequences, items=items)
    statuses = store(gateway.node, too_deep, at_limit)

    assert [int(s.Status) for s in statuses] == [STATUS_MALFORMED, 0x0000]
    assert f"nested deeper than {MAX_SEQUENCE_DEPTH}" in statuses[0].ErrorComment
    (reason,) = gateway.reasons()
    assert reason.startswith(f"reason: malformed data set: sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
    ((path, meta),) = gateway.stored
    assert meta.patient_id == "NEST-1"
    # What was accepted parses whole, every level of it, without RecursionError.
    item = dcmread(path)
    for _ in range(MAX_SEQUENCE_DEPTH):
        item = item.ContentSequence[0]
    assert item.CodeValue == "AB"
    assert scu.echo(gateway.node, config=QUICK) >= 0  # still serving


def test_private_and_un_elements_that_hold_nested_items_count_toward_the_limit() -> None:
    """pydicom may read a private tag (from its private dictionary) or a UN element as SQ:
    a value that walks as items is walked, and its depth counts."""
    deep = nested_sequences(MAX_SEQUENCE_DEPTH + 1, implicit=True, sequences="defined", items="defined",
                            tag=(0x0029, 0x1010))
    with pytest.raises(TooDeep):
        check_structure(io.BytesIO(deep), 0, len(deep), implicit=True, little=True)
    # Explicit VR "UN" holding a known sequence (PS3.5 6.2.2: implicit VR items inside).
    def as_un(depth: int) -> bytes:
        value = nested_sequences(depth, implicit=True, sequences="defined", items="defined")[8:]  # header off
        return struct.pack("<HH", *_CONTENT_SEQUENCE) + b"UN\x00\x00" + struct.pack("<I", len(value)) + value

    ok = as_un(MAX_SEQUENCE_DEPTH)
    assert check_structure(io.BytesIO(ok), 0, len(ok), implicit=False, little=True) is False
    deep = as_un(MAX_SEQUENCE_DEPTH + 1)
    with pytest.raises(TooDeep):
        check_structure(io.BytesIO(deep), 0, len(deep), implicit=False, little=True)
    # A private value that merely starts like an item is opaque, not malformed.
    odd = struct.pack("<HHI", 0x0029, 0x1011, 12) + _ITEM + b"\x40\x00\x00\x00" + b"XXXX"
    assert check_structure(io.BytesIO(odd), 0, len(odd), implicit=True, little=True) is False


def test_encapsulated_pixel_fragments_are_not_walked_as_data_sets() -> None:
    fragment = b"\xfe\xff\x00\xe0" + struct.pack("<I", 6) + b"\xff\xd8\xff\xe0\x00\x10"
    offsets = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
    pixels = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + offsets + fragment + _SEQUENCE_END
    assert check_structure(io.BytesIO(pixels), 0, len(pixels), implicit=False, little=True) is True


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("1.2.826.0.1.3680043.8.498.1", True),
        ("1.2.3.04", True),  # leading zero: not conformant, but harmless in a path
        ("1" * 64, True),
        ("1" * 65, False),
        ("", False),
        ("../../etc/x", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2/3", False),
        ("1.2.3\x00", False),
        ("1.2.3 ", False),
        (None, False),
    ],
    ids=["ct_class", "pydicom_root", "leading_zero_tolerated", "64_chars", "65_chars", "empty",
         "path_traversal", "empty_component", "leading_dot", "trailing_dot", "slash", "nul", "space", "none"],
)
def test_uid_grammar(uid, ok) -> None:
    assert valid_uid(uid) is ok


def test_the_dicom_layer_imports_no_flask() -> None:
    """app/dicom is a pure library: the job layer brings the app context, not this."""
    import ast

    folder = Path(__file__).resolve().parent.parent / "app" / "dicom"
    for source in folder.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("flask", "flask_sqlalchemy", "flask_login") for n in names), source
            assert not any(n.startswith("app.") and not n.startswith("app.dicom") for n in names), source
@pytest.mark.slow


def test_a_long_lived_gateway_does_not_grow_with_associations(gateway: Gateway, tmp_path: Path) -> None:
    """PITFALLS: long-lived pynetdicom SCPs have leaked memory per association (#328,
    #669). The gateway runs for weeks; 200 associations after a warm-up of 150 must
    leave this process (SCP and sender) within a few MB of where it was. Measured here:
    RSS levels off after ~150 associations, then grows < 0.1 MB per 150; a leak of 20 KB
    an association would fail. (~35 ms each: pynetdicom's acceptor negotiates contexts.)"""
    (path,) = study(tmp_path / "src", n_per_series=1)
    part = read_part10(path)

    def one_association() -> None:
        with StoreLink(gateway.node, [(part.sop_class, part.syntax)], config=QUICK) as link:
            assert int(link.store(path, part, link.context_for(part.sop_class, part.syntax)).Status) == 0

    for _ in range(150):  # warm-up: imports, caches, the allocator's arenas
        one_association()
    gateway.stored.clear()
    gc.collect()
    before = rss_kb()
    for _ in range(200):
        one_association()
    gateway.stored.clear()
    gc.collect()
    growth_mb = (rss_kb() - before) / 1024
    print(f"\nRSS growth over 200 associations: {growth_mb:.2f} MB")
    assert len(gateway.files()) == 1  # the same instance, stored over itself
    assert growth_mb < 4, f"RSS grew {growth_mb:.1f} MB over 200 associations"
