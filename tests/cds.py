"""Test CDs, written into a test's tmp_path: folders as a browser uploads them (every file
stored under an opaque name, its path on the CD kept as text), DICOMDIRs written by
pydicom's FileSet, and zips honest and hostile. Names are synthetic, none from the PAS
fixtures (conftest checks no PAS value is logged)."""

from __future__ import annotations

import shutil
import stat
import struct
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from app.dicom.synth import make_instance


@dataclass
class Patient:
    name: str = "DOE^JANE"
    id: str = "CD100001"
    birth_date: str = "19700101"


@dataclass
class StudySpec:
    """A study of series, each given as (modality, number of instances)."""

    series: list[tuple[str, int]]
    date: str = "20240101"
    accession: str = "ACC1"
    patient: Patient = field(default_factory=Patient)
    uid: str = field(default_factory=generate_uid)


def datasets(studies: Iterable[StudySpec], size: int = 8) -> list[Dataset]:
    """The instances of the studies (size x size pixels, 16 bits: small files)."""
    out = []
    for study in studies:
        for number, (modality, count) in enumerate(study.series, start=1):
            series_uid = generate_uid()
            for i in range(1, count + 1):
                out.append(
                    make_instance(
                        patient_id=study.patient.id,
                        patient_name=study.patient.name,
                        birth_date=study.patient.birth_date,
                        study_uid=study.uid,
                        series_uid=series_uid,
                        study_date=study.date,
                        accession=study.accession,
                        modality=modality,
                        series_number=number,
                        instance_number=i,
                        rows=size,
                        cols=size,
                    )
                )
    return out


def two_studies() -> list[StudySpec]:
    """One patient, two studies: a CT of two series (3 + 2) and an MR of one series (4)."""
    return [
        StudySpec(series=[("CT", 3), ("CT", 2)], date="20240101", accession="ACC1"),
        StudySpec(series=[("MR", 4)], date="20240301", accession="ACC2"),
    ]


def write_fileset(root: Path, instances: Iterable[Dataset]) -> Path:
    """A CD as a media creator writes it: DICOMDIR at the root, PT000000/ST000000/... files."""
    fs = FileSet()
    for ds in instances:
        fs.add(ds)
    root.mkdir(parents=True, exist_ok=True)
    fs.write(root)
    return root


def write_folder(root: Path, instances: Iterable[Dataset], folder: str = "IMAGES") -> Path:
    """A CD without a DICOMDIR: IMAGES/IM1, IM2, ... (no extension, as CDs often have)."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(instances, start=1):
        ds.save_as(root / folder / f"IM{i}", enforce_file_format=True)
    return root


def upload(root: Path, store: Path, top: str = "CD", sep: str = "/") -> dict[str, Path]:
    """What the browser's folder upload leaves on the server: each file of `root` copied to
    `store` under an opaque name; keys are `top/relpath` as the browser gives them."""
    store.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stored = store / uuid.uuid4().hex
        shutil.copyfile(path, stored)
        files[sep.join([top, *path.relative_to(root).parts])] = stored
    return files


def dicom_bytes(ds: Dataset, tmp: Path) -> bytes:
    path = tmp / f"{uuid.uuid4().hex}.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


def zip_entry(name: str, *, link: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    mode = (stat.S_IFLNK | 0o777) if link else (stat.S_IFREG | 0o644)
    info.external_attr = mode << 16
    return info


def write_zip(path: Path, entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def zeros_zip(path: Path, entries: Iterable[tuple[str, int]]) -> Path:
    """Entries of nothing but zero bytes (deflate shrinks them about 1000:1), streamed in."""
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, size in entries:
            with zf.open(zip_entry(name), "w", force_zip64=size > 2**31) as out:
                left = size
                while left:
                    out.write(chunk[: min(left, len(chunk))])
                    left -= min(left, len(chunk))
    return path


def _central_header(data: bytearray, name: str) -> int:
    """Where entry `name`'s central file header starts (PKWARE APPNOTE 4.3.12)."""
    encoded = name.encode()
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46: pos + 46 + name_len]) == encoded:
            return pos
        pos += 4
    raise AssertionError(f"no central directory entry for {name}")


def lie_about_size(path: Path, name: str, declared: int) -> None:
    """Patch the central directory's uncompressed size of entry `name` (offset 24 of its
    central file header) to `declared`."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<L", data, _central_header(data, name) + 24, declared)
    path.write_bytes(bytes(data))


def mark_encrypted(path: Path, name: str) -> None:
    """Set the 'encrypted' bit (general purpose flag bit 0, offset 8 of the central file
    header) of entry `name`: zipfile writes no encrypted entries itself."""
    data = bytearray(path.read_bytes())
    data[_central_header(data, name) + 8] |= 0x1
    path.write_bytes(bytes(data))


def tree(root: Path) -> set[Path]:
    """Every file and folder under root (to prove nothing was written elsewhere)."""
    return set(root.rglob("*"))
