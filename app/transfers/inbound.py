"""What arrives at the gateway: record it, and match it to an open import request.

Called by the gateway SCP for every stored instance (and by a direct pull): idempotent,
since a sender may send an instance twice. What the gateway refuses is recorded too
(`record_quarantined`), so the desk lists it on Arrivals.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.exc import IntegrityError

from app import audit
from app.dicom.fixup import parse_date, sender_nhs_number
from app.dicom.scp import InstanceMeta, QuarantineInfo
from app.extensions import db
from app.patients.models import Patient
from app.requests.models import ExamLine, Request
from app.requests.statuses import Kind, Status
from app.timeutil import aware, utcnow
from app.transfers.models import InboundStudy
from app.transfers.quarantine import QuarantinedFile
from app.workflow.machine import advance

log = logging.getLogger("iep.gateway")

OPEN_IMPORT = (Status.NEW, Status.AWAITING_DETAILS, Status.ACCEPTED, Status.DOWNLOAD_REQUEST, Status.DOWNLOADING)


def _letters(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalpha())


def match_request(meta: InstanceMeta) -> Request | None:
    """The open import request this study answers, if exactly one fits.

    A request fits when the sender's ids name our patient (the S number as PatientID, or
    the NHS number anywhere), or the family name and date of birth agree with the
    register; among several, the one with an examination on the study's date wins.
    """
    nhs = sender_nhs_number(meta)
    family = _letters(meta.patient_name.split("^")[0])
    birth = parse_date(meta.birth_date)
    patients = sa.select(Patient.id).where(
        sa.or_(
            Patient.s_number == meta.patient_id.strip().upper(),
            sa.and_(sa.literal(bool(nhs)), Patient.nhs_number == nhs),
            sa.and_(Patient.dob == birth, sa.literal(birth is not None)),
        )
    )
    candidates = [
        req
        for req in db.session.scalars(
            sa.select(Request).where(
                Request.patient_id.in_(patients),
                Request.kind.in_([Kind.IMPORT]),
                Request.status.in_(OPEN_IMPORT),
            )
        )
        if req.patient.s_number == meta.patient_id.strip().upper()
        or (nhs and req.patient.nhs_number == nhs)
        or (_letters(req.patient.family_name) == family and req.patient.dob == birth)
    ]
    if len(candidates) > 1:
        study_day = parse_date(meta.study_date)
        on_day = [
            r for r in candidates
            if db.session.scalar(
                sa.select(ExamLine.id).where(ExamLine.request_id == r.id, ExamLine.exam_date == study_day)
            )
        ]
        candidates = on_day
    return candidates[0] if len(candidates) == 1 else None


def record_arrival(path: Path, meta: InstanceMeta, *, modalities: Iterable[str] = ()) -> InboundStudy:
    """Note an instance the gateway stored (with the `modalities` of others of its study
    stored since the last note); match its study on first sight; count what its folder
    holds. Commits."""
    for _ in range(3):
        study = db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == meta.study_uid))
        if study is None:
            study = InboundStudy(
                study_uid=meta.study_uid,
                sender_ae=meta.calling_ae[:16],
                patient_id=meta.patient_id[:64],
                issuer_of_patient_id=meta.issuer_of_patient_id[:64],
                patient_name=meta.patient_name[:200],
                birth_date=meta.birth_date[:8],
                other_ids=",".join(i for i, _issuer in meta.other_patient_ids)[:200],
                accession=meta.accession[:64],
                study_date=meta.study_date[:8],
                description=meta.study_description[:200],
                folder=str(path.parent),
            )
            req = match_request(meta)
            if req is not None:
                study.request = req
            db.session.add(study)
        seen = set(filter(None, (study.modalities or "").split(",")))
        seen |= {meta.modality, *modalities} - {""}
        study.modalities = ",".join(sorted(seen))[:64]
        count_folder(study, path.parent)
        study.last_received_at = utcnow()
        try:
            db.session.commit()
            settle(study)
            return study
        except IntegrityError:
            db.session.rollback()  # the same study's first instance came in on another association
    raise RuntimeError("could not record the arrival")


def count_folder(study: InboundStudy, folder: Path) -> datetime | None:
    """Set the study's instances and bytes to what its folder on the gateway holds;
    return when the newest of them was written (None for an empty folder)."""
    sizes, newest = [], 0.0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".dcm") and entry.is_file():
                info = entry.stat()
                sizes.append(info.st_size)
                newest = max(newest, info.st_mtime)
    study.instances, study.bytes = len(sizes), sum(sizes)
    return datetime.fromtimestamp(newest, UTC) if sizes else None


def record_quarantined(path: Path, info: QuarantineInfo) -> QuarantinedFile:
    """Note an instance the gateway refused and quarantined at `path`. Commits.

    Idempotent: the quarantine gives every refused instance a new file name, so one path
    is one row; recording the same path again returns the existing row.
    """
    existing = db.session.scalar(sa.select(QuarantinedFile).where(QuarantinedFile.path == str(path)))
    if existing is not None:
        return existing
    row = QuarantinedFile(
        sender_ae=info.calling_ae[:16],
        received_at=info.received_at,
        patient_name=info.patient_name[:200],
        patient_id=info.patient_id[:64],
        study_uid=info.study_uid[:64],
        reason=info.reason[:300],
        path=str(path)[:500],
        size=info.size_bytes,
    )
    db.session.add(row)
    db.session.commit()
    # No patient data in the log (PITFALLS): the row id and the reason are enough.
    log.info("refused instance from %r recorded as quarantined file %s", info.calling_ae, row.id)
    return row


def settle(study: InboundStudy, *, commit: bool = True, actor_id: int | None = None,
           actor: str = audit.SYSTEM_GATEWAY) -> bool:
    """Say On IEP for the study's request once the desk knows the study is complete on
    the gateway (issue 8.3: until then the request page shows "arriving: N so far").
    The change is the gateway's, or the analyst's (`actor_id`) who matched the study.
    True if the request moved."""
    from app.transfers.service import arrival_state

    complete, _words = arrival_state(study)
    if study.request is None or not complete:
        return False
    moved = advance(study.request, Status.ON_IEP, actor_id=actor_id, actor=actor,
                    note=f"Images arrived on the gateway from {study.sender_ae or 'the sender'}, complete.")
    if commit:
        db.session.commit()
    return moved


def record_sender_done(study_uids: set[str], released: bool) -> None:
    """The sender's association that brought these studies ended: released (it says it
    has finished) or not. A study counts as complete after a release and a quiet period
    (`service.arrival_state`). Idempotent."""
    now = utcnow()
    studies = db.session.scalars(sa.select(InboundStudy).where(InboundStudy.study_uid.in_(sorted(study_uids)))).all()
    for study in studies:
        try:
            newest = count_folder(study, Path(study.folder))
        except OSError:
            newest = None  # a purged or moved folder keeps its last counts
        if newest is not None and newest > aware(study.last_received_at):
            study.last_received_at = newest  # the gateway notes arrivals at most once a second
        study.sender_done_at = max(now, aware(study.last_received_at))
        study.sender_released = released
    for study in studies:
        settle(study, commit=False)  # one commit: never "complete" without its On IEP
    db.session.commit()


def in_app_context(app: Flask, record: Callable[[Any, Any], object]) -> Callable[[Any, Any], None]:
    """A GatewaySCP callback that runs `record(a, b)` in an app context of its own.

    The SCP calls back from its association threads: each call gets its own context and
    database session, removed afterwards. Exceptions propagate to the SCP, which decides
    what the sender is told.
    """

    def callback(first: Any, second: Any) -> None:  # noqa: ANN401 - (path, meta/info) or (studies, released)
        with app.app_context():
            try:
                record(first, second)
            finally:
                db.session.remove()

    return callback
