"""Turning a valid submission into a request row.

Plain values in (`RequestValues`, built by the view from the validated form): no Flask
request objects and no WTForms here. Like every service, it changes the session and
never commits; the view commits once (README, "Layout").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from app import audit
from app.auth.models import User
from app.extensions import db
from app.patients.models import Patient
from app.requests.callref import next_call_ref
from app.requests.models import ExamLine, Institution, Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import local_today

_PATIENT_FIELDS = (
    "s_number", "nhs_number", "family_name", "given_name", "dob", "gender",
    "address_line1", "address_line2", "town", "county", "postcode",
)
_CONTACT_FIELDS = ("contact_name", "contact_phone", "contact_email", "comments")
_KIND_FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.IMPORT: (
        "institution_name", "priority_reason", "requesting_clinician", "consultant",
        "department", "required_by",
    ),
    Kind.EXPORT: (
        "institution_name", "priority_reason", "required_by", "site_contact_name",
        "site_contact_position", "site_contact_phone", "site_contact_email",
    ),
    Kind.CD: ("internal_post_address", "cd_count", "drop_off_site"),
}


@dataclass(frozen=True)
class RequestValues:
    """One validated submission as plain values.

    `answers`: the form's fields by name (`form.data`); the service copies those of this
    kind (`_PATIENT_FIELDS`, `_CONTACT_FIELDS`, `_KIND_FIELDS`) and ignores the rest.
    `exams`: the filled exam lines as (date, description, code). `patient`: the PAS
    record the form's validation matched.
    """

    kind: Kind
    patient: Patient
    answers: Mapping[str, object]
    exams: tuple[tuple[date | None, str, str], ...]  # ExamKey; a line may be undated
    submission_key: str | None = None


def _text(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def create_request(values: RequestValues, requester: User, duplicate_of: Request | None = None) -> Request:
    """Save a validated submission as a `New` request with a fresh call reference; a CD
    import starts at `Awaiting Drop-off` (its CDs are on their way to a reception, issue 12.5).

    `duplicate_of`: the earlier request for the same examination that the requester was
    warned about and chose to submit anyway (app/intake/duplicates.py).

    All or nothing: the caller commits once; on any error it rolls back and nothing of
    the request is left behind.
    """
    kind = values.kind
    req = Request(
        call_ref=next_call_ref(local_today().year),
        kind=kind,
        status=Status.AWAITING_DROP_OFF if kind == Kind.CD else Status.NEW,
        requester=requester,
        patient=values.patient,
        submission_key=values.submission_key or None,
        duplicate_of=duplicate_of,
    )
    for name in answer_names(kind):
        setattr(req, name, clean_answer(name, values.answers.get(name)))
    priority = values.answers.get("priority")
    req.priority = Priority(str(priority)) if priority else Priority.STANDARD  # the CD form has none
    if kind in (Kind.IMPORT, Kind.EXPORT):
        req.institution = institution_named(req.institution_name)
    for position, (exam_date, description, exam_code) in enumerate(values.exams):
        req.exams.append(
            ExamLine(
                position=position,
                exam_date=exam_date,
                description=(description or "").strip(),
                exam_code=(exam_code or "").strip(),
            )
        )
    db.session.add(req)
    db.session.flush()
    detail = f"{req.call_ref} {kind.value}"
    if duplicate_of is not None:
        detail += f" same examination as {duplicate_of.call_ref}"
    audit.record(audit.Action.SUBMIT, request_id=req.id, detail=detail)
    return req


def answer_names(kind: Kind) -> tuple[str, ...]:
    """The request's columns that a form of `kind` fills (besides priority and exam lines)."""
    return _PATIENT_FIELDS + _CONTACT_FIELDS + _KIND_FIELDS[kind]


def clean_answer(name: str, value: object) -> object:
    """A form's answer as the request keeps it: trimmed, a postcode in capitals, blank as
    the column's empty value."""
    value = _text(value) or _empty(name)
    return value.upper() if name == "postcode" and isinstance(value, str) else value


def institution_named(name: str) -> Institution | None:
    """The registered, active institution of that name (any case), if there is one. A
    deactivated one is not linked to new answers: its name is kept as typed, as for a
    hospital the register does not know (guideline Appendix 3: "organisation name in full")."""
    return db.session.scalar(sa.select(Institution).where(sa.func.lower(Institution.name) == name.lower(),
                                                          Institution.active))


def offered_institutions() -> list[Institution]:
    """The register's active institutions, by name: what the forms offer to pick from
    (a datalist: the requester may still type a hospital the register does not know)."""
    return list(db.session.scalars(sa.select(Institution).where(Institution.active).order_by(Institution.name)))


def already_submitted(key: str | None, requester: User) -> Request | None:
    """The request this form already created, if its Submit was pressed before."""
    if not key:
        return None
    return db.session.scalar(
        sa.select(Request).where(Request.submission_key == key, Request.requester_id == requester.id)
    )


def _empty(name: str) -> object:
    # Nullable columns keep None; text columns keep "".
    return None if name in {"required_by", "cd_count"} else ""
