"""The trauma route to Nottingham (guideline 2.8, Appendix 4) as plain values.

The radiologist's screen finds the patient, lists the local PACS's studies, and sends
the ticked ones with the pasted report to the one trauma destination at Blue Light
priority. Nothing here reads a Flask request; like every service it changes the session
and never commits (README "Layout"): the view commits once, then calls `enqueue`.

The studies a search found travel between the screen's steps in a signed token
(`seal` / `unseal`), so the Send can take only studies this desk listed for this patient,
without asking the PACS again.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app import audit
from app.auth.models import User
from app.dicom import scu
from app.extensions import db
from app.patients.models import Patient
from app.requests.callref import next_call_ref
from app.requests.models import ExamLine, Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import aware, local_today, utcnow
from app.transfers import service as transfers
from app.transfers.models import DicomNode, Direction, Transfer, TransferItem, TransferState
from app.transfers.search import StudyFilters

PRIORITY_REASON = "Trauma patient in ED transferred to Nottingham (guideline 2.8): clinical emergency"
DEFAULT_INSTITUTION = "Nottingham University Hospitals NHS Trust"
MAX_REPORT_CHARS = 20000
_TOKEN_SALT = "iep.trauma.studies"  # noqa: S105 - a signing namespace, not a password
# Longer than a session lives idle (SESSION_IDLE_MINUTES): the session ends first.
_TOKEN_MAX_AGE = 2 * 3600
RECENT_SEND = timedelta(hours=24)  # a second Send of the same studies within this asks first


class TraumaRefused(Exception):
    """The Send cannot go, in the radiologist's words; nothing was changed."""


@dataclass(frozen=True)
class PickedStudy:
    """One study of the local PACS as the screen lists it."""

    study_uid: str
    study_date: str  # YYYYMMDD as the PACS gave it ("" when it gave none)
    description: str
    modalities: str
    images: int | None
    accession: str
    # Whom the PACS files the study under, for the "right patient?" check (step 10).
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""

    @property
    def filed_under(self) -> str:
        """"SMITH^MARGARET, S1234567, born 14/03/1948" as the PACS has it."""
        born = ""
        with contextlib.suppress(ValueError):
            born = f", born {datetime.strptime(self.patient_birth_date, '%Y%m%d'):%d/%m/%Y}"
        return f"{self.patient_name or '?'}, {self.patient_id or '?'}{born}"

    @property
    def acquired(self) -> date | None:
        try:
            return datetime.strptime(self.study_date, "%Y%m%d").date()
        except ValueError:
            return None

    @property
    def label(self) -> str:
        """"CT HEAD, 04/12/2026": how a person names the study (the modalities when the
        study has no description)."""
        what = self.description or self.modalities or "Study"
        when = self.acquired
        return f"{what}, {when:%d/%m/%Y}" if when else f"{what}, date not recorded"


def destination() -> DicomNode | None:
    """The trauma route's one destination: the active node whose register name is
    TRAUMA_NODE, else the one active node with that AE title (AE titles need not be
    unique: two make it ambiguous, and nothing is sent)."""
    name = transfers.settings().trauma_node
    by_name = db.session.scalar(sa.select(DicomNode).where(DicomNode.name == name, DicomNode.active))
    if by_name is not None:
        return by_name
    by_ae = list(db.session.scalars(sa.select(DicomNode).where(DicomNode.ae_title == name, DicomNode.active).limit(2)))
    return by_ae[0] if len(by_ae) == 1 else None


def patient_by_s_number(s_number: str) -> Patient | None:
    return db.session.scalar(sa.select(Patient).where(Patient.s_number == s_number))


def find_studies(patient: Patient, filters: StudyFilters) -> list[PickedStudy]:
    """The local PACS's studies for `patient`, newest first (one association: by S number
    and by the register's NHS number, never by one only typed on the screen). Raises
    TraumaRefused when the local PACS is not registered and DicomFailure when it does not
    answer."""
    pacs = transfers.local_pacs()
    if pacs is None:
        raise TraumaRefused("The local PACS is not in the node register, so its studies cannot be listed.")
    found = scu.find_studies(
        transfers.as_node(pacs),
        patient_id=patient.s_number,
        nhs_number=patient.nhs_number or None,
        date_from=filters.date_from,
        date_to=filters.date_to,
        modality=filters.modality or None,
        description=filters.description or None,
        accession=filters.accession or None,
        config=transfers.ae_config(),
    )
    return [
        PickedStudy(study_uid=s.study_uid, study_date=s.study_date, description=s.description,
                    modalities=", ".join(s.modalities), images=s.n_instances, accession=s.accession,
                    patient_id=s.patient_id, patient_name=s.patient_name, patient_birth_date=s.patient_birth_date)
        for s in found
    ]


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_TOKEN_SALT)


def seal(s_number: str, studies: list[PickedStudy]) -> str:
    """The studies listed for this patient, signed for the screen's next step."""
    return _serializer().dumps({"s": s_number, "studies": [asdict(s) for s in studies]})


def unseal(token: str, s_number: str) -> list[PickedStudy] | None:
    """The studies `seal` listed for this S number; None for a token that is forged,
    too old, or made for another patient."""
    try:
        data: Any = _serializer().loads(token, max_age=_TOKEN_MAX_AGE)
    except BadSignature:  # also SignatureExpired
        return None
    if not isinstance(data, dict) or data.get("s") != s_number:
        return None
    try:
        return [PickedStudy(**row) for row in data["studies"]]
    except (KeyError, TypeError):
        return None


@dataclass(frozen=True)
class TraumaValues:
    """A checked Send: the patient (matched on the PAS register), the NHS number given or
    why there is none, the ticked studies, the pasted report, the screen's one-time key."""

    patient: Patient
    nhs_number: str
    no_nhs_reason: str
    studies: tuple[PickedStudy, ...]
    report_text: str = ""
    report_study_uid: str = ""  # the study the report is about (goes first: it carries the report)
    submission_key: str | None = None


def recent_sends(study_uids: list[str], now: datetime) -> list[Request]:
    """Trauma requests of the last RECENT_SEND that sent any of these studies: a second
    Send (the back button, a colleague) asks before it sends them again."""
    sent_any = sa.select(ExamLine.request_id).where(ExamLine.study_uid.in_(study_uids))
    return list(db.session.scalars(
        sa.select(Request).where(Request.kind == Kind.TRAUMA, Request.created_at >= now - RECENT_SEND,
                                 Request.id.in_(sent_any))
        .order_by(Request.created_at.desc()).limit(20)))


def already_sent(key: str | None, user: User) -> Request | None:
    """The trauma request this screen's Send already made (a double click, a resend)."""
    if not key:
        return None
    return db.session.scalar(sa.select(Request).where(Request.submission_key == key, Request.requester_id == user.id))


def send(values: TraumaValues, user: User) -> tuple[Request, Transfer]:
    """The trauma request and its Blue Light transfer to the trauma destination, audited.

    Raises TraumaRefused, changing nothing, when the local PACS or the destination is not
    registered or no study is ticked. Never commits: the caller commits, then calls
    `transfers.enqueue`.
    """
    if not values.studies:
        raise TraumaRefused("Tick at least one study to send.")
    source, dest = transfers.local_pacs(), destination()
    if source is None:
        raise TraumaRefused("The local PACS is not in the node register.")
    if dest is None:
        raise TraumaRefused(f"{transfers.settings().trauma_node} is not in the node register.")
    patient = values.patient
    req = Request(
        call_ref=next_call_ref(local_today().year),
        kind=Kind.TRAUMA,
        status=Status.NEW,
        priority=Priority.BLUE_LIGHT,
        priority_reason=PRIORITY_REASON,
        requester=user,
        patient=patient,
        submission_key=values.submission_key or None,
        s_number=patient.s_number,
        nhs_number=values.nhs_number,
        no_nhs_reason="" if values.nhs_number else values.no_nhs_reason.strip()[:200],
        family_name=patient.family_name,
        given_name=patient.given_name,
        dob=patient.dob,
        gender=patient.gender or "",
        address_line1=patient.address_line1 or "",
        address_line2=patient.address_line2 or "",
        town=patient.town or "",
        county=patient.county or "",
        postcode=patient.postcode or "",
        contact_name=user.name,
        contact_phone=user.phone or "",
        contact_email=user.email,
        required_by=local_today(),
        institution=dest.institution,
        institution_name=dest.institution.name if dest.institution else DEFAULT_INSTITUTION,
        department=user.department or "",
    )
    for position, study in enumerate(values.studies):
        req.exams.append(ExamLine(position=position, exam_date=study.acquired or local_today(),
                                  description=study.label[:200], study_uid=study.study_uid))
    db.session.add(req)
    db.session.flush()
    audit.record(audit.Action.SUBMIT, request_id=req.id, user_id=user.id,
                 detail=f"{req.call_ref} trauma to {dest.name}: {len(values.studies)} studies")
    uids = [s.study_uid for s in values.studies]
    if values.report_study_uid in uids:  # the engine files the report in the first study
        uids.remove(values.report_study_uid)
        uids.insert(0, values.report_study_uid)
    transfer = transfers.create_transfer(
        request=req, direction=Direction.OUTBOUND, priority=Priority.BLUE_LIGHT, source=source, dest=dest,
        study_uids=uids, user_id=user.id,
        report_text=values.report_text.strip()[:MAX_REPORT_CHARS],
    )
    audit.record(audit.Action.TRANSFER, request_id=req.id, user_id=user.id,
                 detail=f"{req.call_ref} transfer {transfer.id} started")
    return req, transfer


def trauma_transfer(req: Request) -> Transfer | None:
    """The request's latest transfer to its destination (a Retry by the desk reuses it)."""
    return db.session.scalar(
        sa.select(Transfer).where(Transfer.request_id == req.id, Transfer.direction == Direction.OUTBOUND)
        .order_by(Transfer.id.desc()).limit(1))


@dataclass(frozen=True)
class StudyProgress:
    """How far one study got: instances confirmed at the destination of those listed."""

    label: str
    confirmed: int
    listed: int

    @property
    def arrived(self) -> bool:
        return self.listed > 0 and self.confirmed == self.listed


def study_progress(req: Request, transfer: Transfer) -> list[StudyProgress]:
    """Per ticked study, what the destination confirmed (the report counts with its study).
    A study whose instances were never listed (the local PACS failed first) shows 0 of 0."""
    counts = {
        row.study_uid: (int(row.listed), int(row.confirmed or 0))
        for row in db.session.execute(
            sa.select(TransferItem.study_uid, sa.func.count(TransferItem.id).label("listed"),
                      sa.func.sum(sa.case((TransferItem.confirmed, 1), else_=0)).label("confirmed"))
            .where(TransferItem.transfer_id == transfer.id).group_by(TransferItem.study_uid))
    }
    out = []
    for line in req.exams:
        listed, confirmed = counts.get(line.study_uid, (0, 0))
        out.append(StudyProgress(label=line.description, confirmed=confirmed, listed=listed))
    return out


def where_it_failed(transfer: Transfer) -> str:
    """Which leg a failure is on, in words: the studies are taken from the local PACS
    first (every instance listed and fetched), then sent to the destination."""
    fetched_all = db.session.scalar(sa.select(sa.func.count(TransferItem.id)).where(
        TransferItem.transfer_id == transfer.id, TransferItem.path == "")) == 0
    listed = db.session.scalar(sa.select(TransferItem.id).where(TransferItem.transfer_id == transfer.id).limit(1))
    if listed is not None and fetched_all:
        return f"Sending to {transfer.dest_node.name if transfer.dest_node else 'NUH'} failed"
    source = transfer.source_node.name if transfer.source_node else "?"
    return f"Taking the studies from the local PACS ({source}) failed"


def seconds_taken(transfer: Transfer | None) -> int | None:
    """Send to Delivered, in whole seconds (None until it is delivered)."""
    if transfer is None or transfer.state != TransferState.DELIVERED or transfer.finished_at is None:
        return None
    return round((aware(transfer.finished_at) - aware(transfer.created_at)).total_seconds())


def outcome(transfer: Transfer | None, now: datetime | None = None) -> str:
    """What the radiologist's tracker says, in one word: waiting, not_started (no worker
    took it within BLUE_LIGHT_START), sending, delivered, failing (an attempt failed;
    another is coming), failed, cancelled."""
    if transfer is None:
        return "failed"
    now = now or utcnow()
    if transfer.state == TransferState.DELIVERED:
        return "delivered"
    if transfer.state == TransferState.CANCELLED:
        return "cancelled"
    if transfer.state == TransferState.FAILED:
        return "failed"
    if transfer.last_error:
        return "failing"
    if transfer.state in (TransferState.RUNNING, TransferState.VERIFYING):
        return "sending"
    if transfer.attempts == 0 and now - aware(transfer.created_at) > transfers.BLUE_LIGHT_START:
        return "not_started"
    return "waiting"
