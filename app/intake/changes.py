"""A requester's own changes to their request (issue 13.7): correcting its fields while
the desk waits for details, and cancelling it before the desk has accepted it.

Plain values in, like the other services: the view validates the correction with the
request's own intake form and passes `RequestValues`. Nothing here commits; the view
commits once, or rolls back on a refusal.

A correction is audited field by field, old value -> new value: who changed a patient's
details on a request, and from what, is the question information governance asks
(guideline 2.7 a), as it is of a search (app/audit.py). The desk sees the same list on the
request's page, as a change in its thread, and the request goes back to where the desk
picks it up again: New, or for a CD import the step of the CD round it was at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from app import audit
from app.auth.models import User
from app.extensions import db
from app.intake.service import RequestValues, answer_names, clean_answer, institution_named
from app.requests.models import ExamLine, Request
from app.requests.statuses import Kind, Priority, Status
from app.workflow.machine import transition
from app.workflow.models import Message, MessageKind

S = Status
CORRECTABLE = frozenset({S.AWAITING_DETAILS})
CORRECTABLE_KINDS = frozenset({Kind.IMPORT, Kind.EXPORT, Kind.CD})  # the three forms (a trauma transfer has none)
# Before the desk accepts it (guideline 2.4: the desk checks the form first); a CD import
# whose CDs are not yet handed in has not been accepted either.
CANCELLABLE = frozenset({S.NEW, S.AWAITING_DETAILS, S.AWAITING_DROP_OFF})
CD_ROUND = (S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED)
EXAMS = "exams"


class NotNow(Exception):
    """The request is past the point where its requester may do this; says why."""


@dataclass(frozen=True)
class Change:
    """One field the requester changed, with the values as people read them."""

    name: str
    label: str
    old: str
    new: str


def correction_refused(req: Request) -> str:
    """Why the requester may not correct `req` now, or "" when they may."""
    if req.kind not in CORRECTABLE_KINDS:
        return f"{req.call_ref} is {req.kind.label.lower()}: it has no request form to correct."
    if req.status in CORRECTABLE:
        return ""
    return (f"{req.call_ref} is {req.status.value}: a request can be corrected only while the service desk is "
            f"waiting for details from you ({S.AWAITING_DETAILS.value}). To tell the desk about a change, send "
            "a message on the request's page.")


def cancel_refused(req: Request) -> str:
    """Why the requester may not cancel `req` now, or "" when they may."""
    if req.status in CANCELLABLE:
        return ""
    if req.status == S.CANCELLED:
        return f"{req.call_ref} is already cancelled."
    return (f"{req.call_ref} is {req.status.value}: a request can be cancelled here only before the service desk "
            f"accepts it (while it is {', '.join(s.value for s in sorted(CANCELLABLE, key=list(S).index))}). "
            "To stop it now, send a message on the request's page or call the service desk on x18000.")


def shown(value: object) -> str:
    """A value as the request's page shows it."""
    if value is None or value == "":
        return "(blank)"
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    if isinstance(value, Priority):
        return value.value
    return str(value)


def _exam_text(lines: Sequence[tuple[date, str, str]]) -> str:
    return "; ".join(f"{shown(d)} {desc}".strip() + (f" ({code})" if code else "") for d, desc, code in lines)


def apply_correction(req: Request, values: RequestValues, actor: User, labels: Mapping[str, str]) -> list[Change]:
    """Apply the requester's corrected form to `req`: each changed field is set, audited
    (old -> new) and listed in a change message on the request's thread, and the request
    goes back to the desk (`back_to`). Returns the changes; [] (nothing done) when the
    form changes nothing. Raises NotNow when the request cannot be corrected now.
    `labels`: the form's label of each field, for the message."""
    why = correction_refused(req)
    if why:
        raise NotNow(why)
    kind = req.kind
    wanted: dict[str, object] = {name: clean_answer(name, values.answers.get(name)) for name in answer_names(kind)}
    if kind != Kind.CD and values.answers.get("priority"):
        wanted["priority"] = Priority(str(values.answers["priority"]))
    changes: list[Change] = []
    for name, new in wanted.items():
        old = getattr(req, name)
        if old != new and not (old in (None, "") and new in (None, "")):
            changes.append(Change(name, labels.get(name, name), shown(old), shown(new)))
            setattr(req, name, new)
    old_exams = [(e.exam_date, e.description, e.exam_code) for e in req.exams]
    # The form refuses a filled line without its date: every line here has one.
    new_exams = [(d, (desc or "").strip(), (code or "").strip()) for d, desc, code in values.exams if d is not None]
    if new_exams != old_exams:
        changes.append(Change(EXAMS, labels.get(EXAMS, "Examinations"), _exam_text(old_exams), _exam_text(new_exams)))
        _replace_exams(req, new_exams)
    if not changes:
        return []
    req.patient = values.patient
    if "institution_name" in wanted:
        req.institution = institution_named(req.institution_name)
    for change in changes:
        audit.record(audit.Action.EDIT, request_id=req.id, user_id=actor.id,
                     detail=f"{req.call_ref} corrected by the requester: {change.name} "
                            f"{_quoted(change.old)} -> {_quoted(change.new)}")
    body = "The requester corrected the request:\n" + "\n".join(
        f"- {c.label}: {c.old} → {c.new}" for c in changes)
    db.session.add(Message(request_id=req.id, author_id=actor.id, kind=MessageKind.CHANGE.value, body=body))
    transition(req, back_to(req), actor_id=actor.id, note="Corrected by the requester.")
    return changes


def _quoted(text: str) -> str:
    return '"' + (text if len(text) <= audit.VALUE_MAX else text[: audit.VALUE_MAX - 1] + "…") + '"'


def _replace_exams(req: Request, lines: Sequence[tuple[date, str, str]]) -> None:
    """The request's exam lines become `lines`, changing the rows in place."""
    for position, (exam_date, description, code) in enumerate(lines):
        if position < len(req.exams):
            line = req.exams[position]
            if (line.exam_date, line.description, line.exam_code) != (exam_date, description, code):
                line.exam_date, line.description, line.exam_code, line.study_uid = exam_date, description, code, ""
        else:
            req.exams.append(ExamLine(position=position, exam_date=exam_date, description=description,
                                      exam_code=code))
    del req.exams[len(lines):]


def back_to(req: Request) -> Status:
    """Where a corrected request goes: New, or for a CD import the step of the CD round it
    was at when the desk asked for details (Awaiting Drop-off if the trail does not say)."""
    if req.kind != Kind.CD:
        return S.NEW
    into_details = db.session.scalar(
        sa.select(audit.AuditEvent.detail)
        .where(audit.AuditEvent.request_id == req.id, audit.AuditEvent.action == audit.Action.STATUS_CHANGE.value,
               audit.AuditEvent.detail.like(f"% -> {S.AWAITING_DETAILS.value}"))
        .order_by(audit.AuditEvent.id.desc())
        .limit(1)
    )
    # `machine.transition` writes "<call ref> <from> -> <to>".
    before = (into_details or "").removeprefix(f"{req.call_ref} ").rpartition(" -> ")[0]
    return next((step for step in CD_ROUND if step.value == before), S.AWAITING_DROP_OFF)


def cancel(req: Request, actor: User) -> None:
    """The requester cancels their own request (through the status machine, which
    e-mails them the usual notice). Raises NotNow after the desk has accepted it."""
    why = cancel_refused(req)
    if why:
        raise NotNow(why)
    transition(req, S.CANCELLED, actor_id=actor.id, note="Cancelled by the requester.")
