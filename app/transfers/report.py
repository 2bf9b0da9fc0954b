"""The report sent with an export, as an Encapsulated PDF instance in the same study
(PS3.3 A.45.1; Appendix 4 step 13: the report as a document or as pasted text)."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from app.timeutil import local_now
from app.transfers.models import Transfer

ENCAPSULATED_PDF = UID("1.2.840.10008.5.1.4.1.1.104.1")
PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)


def report_pdf_bytes(transfer: Transfer) -> bytes:
    if transfer.report_pdf_path:
        return Path(transfer.report_pdf_path).read_bytes()
    from app.printing.render import render_pdf

    return render_pdf("pdf/report.html", call_ref=transfer.request.call_ref if transfer.request else "",
                      text=transfer.report_text)


def encapsulate_report(transfer: Transfer, sample: Path, folder: Path) -> Path:
    """Write the report instance next to the study's own, copying only the patient and
    study attributes from one of its instances (read without pixel data)."""
    source = dcmread(sample, stop_before_pixels=True)
    ds = Dataset()
    for keyword in PATIENT_AND_STUDY:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    now = local_now()
    sop_uid = generate_uid()
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9999
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Radiology report"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    document = report_pdf_bytes(transfer)
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
