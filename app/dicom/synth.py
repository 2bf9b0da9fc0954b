"""Synthetic DICOM studies for tests, demos and benchmarks.

`make_study` writes valid Part 10 files (Explicit VR Little Endian, full File Meta
Information, UIDs from `pydicom.uid.generate_uid`) with a synthetic greyscale image.
Pixel data is built once per image size and stamped per instance, so a few hundred
files take a second or two; 512 x 512 x 16-bit gives the ~0.5 MB instances of a real CT.
Nothing here is patient data: names and numbers come from the caller.
"""

from __future__ import annotations

import array
import functools
import sys
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

# Image Storage SOP Classes by modality (PS3.4 Annex B.5, Table B.5-1).
SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "CT": UID("1.2.840.10008.5.1.4.1.1.2"),  # CT Image Storage
    "MR": UID("1.2.840.10008.5.1.4.1.1.4"),  # MR Image Storage
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    "US": UID("1.2.840.10008.5.1.4.1.1.6.1"),  # Ultrasound Image Storage
    "OT": UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
}
_CROSS_SECTIONAL = {"CT", "MR"}


def _dicom_date(value: date | str) -> str:
    return value.strftime("%Y%m%d") if isinstance(value, date) else value


@functools.lru_cache(maxsize=8)
def _base_image(rows: int, cols: int, bits: int) -> bytes:
    """A smooth diagonal ramp (12 significant bits at 16 bits allocated); cached per size."""
    if bits == 8:
        row = bytes((x * 255 // max(cols - 1, 1)) for x in range(cols))
        return b"".join(row[y % cols:] + row[: y % cols] for y in range(rows))
    ramp = array.array("H", ((x * 4095 // max(cols - 1, 1)) for x in range(cols)))
    if sys.byteorder != "little":
        ramp.byteswap()
    row = ramp.tobytes()
    shift = 2 * max(cols // rows, 1)
    return b"".join(row[(y * shift) % len(row):] + row[: (y * shift) % len(row)] for y in range(rows))


def _pixels(rows: int, cols: int, bits: int, stamp: int) -> bytes:
    """The base image with its first row replaced by a per-instance stamp, so no two
    instances in a study carry identical pixel data."""
    base = _base_image(rows, cols, bits)
    width = cols * (bits // 8)
    if bits == 16:  # two 12-bit words, so every value stays within Bits Stored
        unit = (stamp & 0xFFF).to_bytes(2, "little") + ((stamp >> 12) & 0xFFF).to_bytes(2, "little")
    else:
        unit = bytes((stamp & 0xFF, (stamp >> 8) & 0xFF, (stamp >> 16) & 0xFF, 0))
    stamp_row = (unit * (width // 4 + 1))[:width]
    return stamp_row + base[width:]


def make_instance(
    *,
    patient_id: str,
    patient_name: str,
    birth_date: date | str,
    study_uid: str,
    series_uid: str,
    study_date: date | str,
    accession: str,
    modality: str = "CT",
    series_number: int = 1,
    instance_number: int = 1,
    rows: int = 256,
    cols: int = 256,
    bits: int = 16,
    description: str = "SYNTHETIC STUDY",
    extra: Mapping[str, Any] | None = None,
) -> Dataset:
    """One synthetic image instance as a dataset with File Meta Information attached."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    sop_class = SOP_CLASS_BY_MODALITY.get(modality, SOP_CLASS_BY_MODALITY["OT"])
    sop_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IEP_SYNTH_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    study_da = _dicom_date(study_date)
    ds.StudyDate = study_da
    ds.SeriesDate = study_da
    ds.AcquisitionDate = study_da
    ds.ContentDate = study_da
    ds.StudyTime = "090000"
    ds.SeriesTime = f"09{series_number % 60:02d}00"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "IEP SYNTHETIC"
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = _dicom_date(birth_date)
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    if modality in _CROSS_SECTIONAL:
        ds.FrameOfReferenceUID = study_uid + ".1" if len(study_uid) <= 62 else generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
    if modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    ds.PatientOrientation = "" if modality in _CROSS_SECTIONAL else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.InstanceCreationDate = datetime.now().strftime("%Y%m%d")
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = _pixels(rows, cols, bits, series_number * 100_000 + instance_number)
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ds


def make_study(
    out_dir: Path | str,
    *,
    patient_id: str,
    patient_name: str,
    birth_date: date | str,
    study_date: date | str,
    n_series: int = 1,
    n_per_series: int = 1,
    modality: str = "CT",
    rows: int = 256,
    cols: int = 256,
    bits: int = 16,
    accession: str = "SYN0001",
    study_uid: str | None = None,
    description: str = "SYNTHETIC STUDY",
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write one study of n_series x n_per_series instances under out_dir; return the paths.

    Files are named `<series>/<instance>.dcm` (no UIDs in paths). `extra` sets further
    attributes by keyword on every instance (e.g. IssuerOfPatientID for fix-up tests, or
    SpecificCharacterSet "ISO_IR 126" for a Greek name: text is encoded when written).
    """
    out = Path(out_dir)
    study_uid = study_uid or generate_uid()
    paths: list[Path] = []
    for s in range(1, n_series + 1):
        series_uid = generate_uid()
        folder = out / f"series{s:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, n_per_series + 1):
            ds = make_instance(
                patient_id=patient_id,
                patient_name=patient_name,
                birth_date=birth_date,
                study_uid=study_uid,
                series_uid=series_uid,
                study_date=study_date,
                accession=accession,
                modality=modality,
                series_number=s,
                instance_number=i,
                rows=rows,
                cols=cols,
                bits=bits,
                description=description,
                extra=extra,
            )
            path = folder / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
