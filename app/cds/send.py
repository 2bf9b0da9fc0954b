"""Match a scanned CD with the request's PAS patient, and send the chosen studies to PACS.

The identity check is the imports' own (`app.dicom.fixup.compare_with_register`): every
patient on the CD is set beside the register, field by field, and a difference stops the
send until the analyst has looked and said so (audited). The chosen studies become
inbound studies of the request, sent by an inbound transfer: the same fix-up (PatientID
becomes the S number), verification at PACS, RIS entries and Delivered e-mail as an
import (`app.transfers.engine.run_inbound`), on the inbound lane.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from app import audit
from app.cds import storage
from app.cds.models import CdUpload, CdUploadState
from app.cds.scan import PatientFound, ScanResult, StudyFound
from app.dicom.fixup import compare_with_register, parse_date
from app.extensions import db
from app.requests.models import Request
from app.timeutil import utcnow
from app.transfers import service
from app.transfers.models import Direction, InboundStudy, Transfer

CD_SENDER = "CD"  # InboundStudy.sender_ae of a study that came on a CD
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_FIELD_LABELS = {"family_name": "Family name", "given_name": "Given name", "dob": "Date of birth",
                 "nhs_number": "NHS number"}


class SendRefused(Exception):
    """The send cannot go as chosen; the message says what to put right. Nothing changed."""


@dataclass
class PatientCheck:
    """One patient on the CD beside the register: the differences, field by field."""

    found: PatientFound
    differences: list[tuple[str, str, str]]  # (what, on the CD, on the PAS register)

    @property
    def matches(self) -> bool:
        return not self.differences


@dataclass
class Review:
    """What the desk sees of a scanned CD: its patients checked, the studies ticked by default."""

    upload: CdUpload
    result: ScanResult
    patients: list[PatientCheck]
    register: dict[str, str]
    ticked: set[str] = field(default_factory=set)
    why_ticked: str = ""

    @property
    def studies(self) -> list[StudyFound]:
        return [s for p in self.result.patients for s in p.studies]

    def check_of(self, study_uid: str) -> PatientCheck | None:
        return next((p for p in self.patients if any(s.study_uid == study_uid for s in p.found.studies)), None)


def _register(req: Request) -> dict[str, str]:
    return {"family_name": req.patient.family_name, "given_name": req.patient.given_name,
            "dob": req.patient.dob.isoformat() if req.patient.dob else "", "nhs_number": req.patient.nhs_number or ""}


def check_patient(found: PatientFound, req: Request) -> PatientCheck:
    meta = {"patient_name": found.name, "birth_date": found.birth_date, "patient_id": found.id,
            "issuer_of_patient_id": found.issuer, "other_patient_ids": []}
    differences = [(_FIELD_LABELS.get(what, what), theirs, ours)
                   for what, theirs, ours in compare_with_register(meta, _register(req))]
    return PatientCheck(found=found, differences=differences)


def review(upload: CdUpload) -> Review | None:
    """The scanned CD set beside the request (None until the scan has a result).

    Ticked by default (guideline 2.7 d): the matching patient's studies on a date the
    form names; every one of that patient's studies when the form named no date."""
    if not upload.scan_json:
        return None
    result = ScanResult.from_json(upload.scan_json)
    req = upload.request
    checks = [check_patient(p, req) for p in result.patients]
    matching = [s for c in checks if c.matches for s in c.found.studies]
    named = {e.exam_date for e in req.exams if e.exam_date}
    if named:
        ticked = {s.study_uid for s in matching if parse_date(s.date) in named}
        why = ("Ticked: the studies on a date the form names." if ticked
               else "None ticked: no study on the CD is on a date the form names.")
    else:
        ticked = {s.study_uid for s in matching}
        why = "Ticked: every study of the request's patient (the form named no study)." if ticked else ""
    return Review(upload=upload, result=result, patients=checks, register=_register(req), ticked=ticked,
                  why_ticked=why)


@dataclass(frozen=True)
class SendPlan:
    review: Review
    study_uids: list[str]
    confirmed_mismatch: bool


def plan_send(upload: CdUpload, study_uids: list[str], confirmed_mismatch: bool) -> SendPlan:
    """Check the desk's choice; raises SendRefused with the first thing to put right."""
    if upload.state == CdUploadState.SENDING:
        raise SendRefused("This CD's studies are already on their way to PACS.")
    if upload.state == CdUploadState.SENT:
        raise SendRefused("This CD's studies are on PACS already.")
    if upload.state != CdUploadState.SCANNED:
        raise SendRefused("The CD has not been scanned yet; wait for the scan to finish.")
    seen = review(upload)
    if seen is None:
        raise SendRefused("The CD has not been scanned yet; wait for the scan to finish.")
    known = {s.study_uid for s in seen.studies}
    chosen = sorted(set(study_uids))
    if not chosen:
        raise SendRefused("Tick at least one study to send to PACS.")
    if any(uid not in known for uid in chosen):
        raise SendRefused("A ticked study is not on this CD; reload the page and tick again.")
    bad = [uid for uid in chosen if not _UID.fullmatch(uid) or len(uid) > 64]
    if bad:
        raise SendRefused("A ticked study has an invalid Study Instance UID, so PACS would refuse it: "
                          + ", ".join(b[:64] for b in bad))
    differing = [c for c in seen.patients if c.differences and any(s.study_uid in chosen for s in c.found.studies)]
    if differing and not confirmed_mismatch:
        raise SendRefused("The CD's patient details differ from the PAS register (shown side by side): check "
                          "the patient, untick the studies that are not this patient's, or tick “I have checked: "
                          "this is the request's patient” to send them with the S number.")
    if service.local_pacs() is None:
        raise SendRefused("The local PACS node is not in the node register.")
    for uid in chosen:
        other = db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == uid))
        if other is not None and (other.request_id != upload.request_id or other.sender_ae != CD_SENDER):
            where = other.request.call_ref if other.request is not None else "no request"
            raise SendRefused(f"The study of {_study_words(seen, uid)} is already on the desk (it arrived on the "
                              f"gateway for {where}); untick it.")
    return SendPlan(review=seen, study_uids=chosen, confirmed_mismatch=confirmed_mismatch)


def _study_words(seen: Review, uid: str) -> str:
    study = next(s for s in seen.studies if s.study_uid == uid)
    return f"{study.date or 'unknown date'} {study.description}".strip()


def _sop_uid(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except (OSError, InvalidDicomError, ValueError):
        return ""
    uid = str(getattr(ds, "SOPInstanceUID", "") or "").strip()
    return uid if _UID.fullmatch(uid) and len(uid) <= 64 else ""


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _study_folder(upload: CdUpload, seen: Review, uid: str) -> tuple[Path, int, int]:
    """The chosen study's instances as a gateway-style folder (<SOP UID>.dcm, hard links to
    the uploaded bytes): the import path's input. Same SOP UID twice on a CD: sent once."""
    index = [s.study_uid for s in seen.studies].index(uid)
    folder = storage.studies_dir(upload.id) / str(index)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    count = size = 0
    for name in seen.result.study_files(uid):
        path = Path(name)
        sop = _sop_uid(path)
        target = folder / f"{sop}.dcm"
        if not sop or target.exists():
            continue
        _link(path, target)
        count += 1
        size += target.stat().st_size
    return folder, count, size


def start_send(upload: CdUpload, plan: SendPlan, user_id: int) -> Transfer:
    """The inbound transfer that sends the chosen studies to PACS, audited. Never commits:
    the caller commits, then calls `service.enqueue` (raises TransferUnderWay)."""
    req = upload.request
    seen = plan.review
    now = utcnow()
    studies: list[InboundStudy] = []
    for uid in plan.study_uids:
        study_found = next(s for s in seen.studies if s.study_uid == uid)
        check = seen.check_of(uid)
        folder, count, size = _study_folder(upload, seen, uid)
        row = db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == uid))
        if row is None:
            row = InboundStudy(study_uid=uid, received_at=now)
            db.session.add(row)
        patient = check.found if check is not None else None
        row.request_id = req.id
        row.sender_ae = CD_SENDER
        row.patient_id = (patient.id if patient else "")[:64]
        row.issuer_of_patient_id = (patient.issuer if patient else "")[:64]
        row.patient_name = (patient.name if patient else "")[:200]
        row.birth_date = (patient.birth_date if patient else "")[:8]
        row.accession = study_found.accession[:64]
        row.study_date = study_found.date[:8]
        row.description = study_found.description[:200]
        row.modalities = ",".join(study_found.modalities)[:64]
        row.instances, row.bytes, row.folder = count, size, str(folder)
        row.last_received_at = row.complete_at = now  # every file of the CD is here
        row.purged_at, row.purge_reason, row.delivered_at = None, "", None
        studies.append(row)
    db.session.flush()
    pacs = service.local_pacs()
    transfer = service.create_transfer(request=req, direction=Direction.INBOUND, priority=req.priority, source=None,
                                       dest=pacs, study_uids=plan.study_uids, user_id=user_id)
    transfer.mismatch_accepted = plan.confirmed_mismatch
    service.add_inbound_items(transfer, studies)
    upload.state = CdUploadState.SENDING
    upload.transfer = transfer
    upload.updated_at = now
    detail = f"{req.call_ref} CD upload {upload.id}: {len(plan.study_uids)} study(ies) to PACS, transfer {transfer.id}"
    if plan.confirmed_mismatch:
        detail += "; the CD's patient details differ from the register and the analyst confirmed the patient"
    audit.record(audit.Action.CD_SEND, request_id=req.id, detail=detail)
    return transfer
