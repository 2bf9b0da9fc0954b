"""The status machine (DESIGN "Requests, statuses and rules"; Appendix 1 "Statuses").

Every status change, from a page, an HTMX row, the CLI or a job, goes through
`transition`, which refuses what the table does not allow and audits what it does. The
audit row names who: the person (`actor_id`) or, when none did it, the part of the system
that did (`actor`, one of audit.SYSTEM_* or audit.CLI; issue 11.9).
"""

from __future__ import annotations

from app import audit
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import CD_ONLY, Kind, Status
from app.timeutil import utcnow
from app.workflow.models import Message, MessageKind

S = Status

ALLOWED: dict[Status, frozenset[Status]] = {
    S.NEW: frozenset({S.AWAITING_DETAILS, S.ACCEPTED, S.DECLINED, S.CANCELLED}),
    S.AWAITING_DETAILS: frozenset(
        {S.NEW, S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED, S.ACCEPTED, S.DECLINED, S.CANCELLED}
    ),
    # The CD round (Appendix 5; issue 12.5), CD imports only (CD_ONLY). The desk still checks
    # the form while the CD waits at the reception: details can be chased at any step.
    S.AWAITING_DROP_OFF: frozenset({S.COLLECTED, S.UPLOADED, S.AWAITING_DETAILS, S.DECLINED, S.CANCELLED}),
    S.COLLECTED: frozenset({S.UPLOADED, S.AWAITING_DETAILS, S.CANCELLED}),
    S.UPLOADED: frozenset(
        {S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED, S.AWAITING_DETAILS, S.FAILED, S.CANCELLED}
    ),
    S.ACCEPTED: frozenset(
        {S.AWAITING_DETAILS, S.DOWNLOAD_REQUEST, S.UPLOADING, S.ON_IEP, S.DECLINED, S.FAILED, S.CANCELLED}
    ),
    S.DOWNLOAD_REQUEST: frozenset({S.DOWNLOADING, S.UPLOADING, S.FAILED, S.CANCELLED}),
    S.DOWNLOADING: frozenset({S.DELIVERED, S.FAILED, S.CANCELLED}),
    S.UPLOADING: frozenset({S.ON_IEP, S.DELIVERED, S.FAILED, S.CANCELLED}),
    S.ON_IEP: frozenset({S.DOWNLOAD_REQUEST, S.DELIVERED, S.PURGED, S.FAILED, S.CANCELLED}),
    S.DELIVERED: frozenset({S.COMPLETED}),
    S.COMPLETED: frozenset(),
    # Guideline 2.5 b: the desk re-processes a declined request.
    S.DECLINED: frozenset({S.AWAITING_DETAILS, S.ACCEPTED, S.CANCELLED}),
    S.FAILED: frozenset({S.DOWNLOAD_REQUEST, S.ACCEPTED, S.CANCELLED}),
    S.CANCELLED: frozenset(),
    S.PURGED: frozenset({S.ACCEPTED, S.CANCELLED}),
}

# Guideline 2.5 a: why another institution declines.
DECLINE_REASONS = {
    "not_found": "The requested study does not exist at that organisation",
    "clinically_inappropriate": "The request is deemed clinically inappropriate",
    "other": "Other",
}

FINISHED = frozenset({S.COMPLETED, S.CANCELLED})


class TransitionRefused(ValueError):
    """The change is not allowed; the message says which changes are. `field` names the
    form field to show it beside: "status", or "note" when the note is what is missing."""

    def __init__(self, current: Status, wanted: Status, detail: str = "", kind: Kind | None = None,
                 field: str = "status") -> None:
        allowed = allowed_next(current, kind)
        options = ", ".join(s.value for s in allowed) if allowed else "none (it is finished)"
        message = detail or (
            f"A request that is {current.value} cannot become {wanted.value}. "
            f"From {current.value} it can become: {options}."
        )
        super().__init__(message)
        self.current, self.wanted, self.allowed, self.field = current, wanted, allowed, field


def allowed_next(current: Status, kind: Kind | None = None) -> list[Status]:
    """The statuses `current` may become, in the order shown to users; given the request's
    `kind`, without the CD round's statuses for a request that is not a CD import."""
    return sorted(
        (s for s in ALLOWED[current] if kind is None or kind == Kind.CD or s not in CD_ONLY),
        key=list(Status).index,
    )


def advance(
    req: Request | None, wanted: Status, *, actor_id: int | None, actor: str = "", note: str = ""
) -> bool:
    """Move `req` to `wanted` if the workflow allows it from where it is; otherwise leave it
    (a transfer's progress never forces a request backwards). True if it moved."""
    if req is None or req.status == wanted or wanted not in ALLOWED[req.status]:
        return False
    if wanted in CD_ONLY and req.kind != Kind.CD:
        return False
    transition(req, wanted, actor_id=actor_id, actor=actor, note=note)
    return True


def transition(
    req: Request,
    wanted: Status,
    *,
    actor_id: int | None,
    actor: str = "",
    note: str = "",
    decline_reason: str = "",
) -> None:
    """Move `req` to `wanted`, or raise TransitionRefused. The caller commits.

    Who moves it: a user (`actor_id`), or without one the system part named by `actor`;
    a change that names neither is a bug (ValueError), not a row with a blank name."""
    if actor_id is None and not actor.strip():
        raise ValueError("a status change names who made it: a user id, or the part of the system")
    current = req.status
    if wanted == current:
        return
    if wanted not in ALLOWED[current]:
        raise TransitionRefused(current, wanted, kind=req.kind)
    if wanted in CD_ONLY and req.kind != Kind.CD:
        raise TransitionRefused(
            current, wanted, f"Only a CD import can be {wanted.value}: {req.call_ref} is "
            f"{'an' if req.kind.label[0] in 'AEIOU' else 'a'} {req.kind.label.lower()} request, "
            "with no CD to drop off, collect or upload.", kind=req.kind
        )
    if wanted == S.AWAITING_DETAILS and not note.strip():
        # Issue 13.7: the requester is e-mailed the note, and it is all they are told.
        raise TransitionRefused(
            current, wanted, "Say in the note what is missing or wrong: the requester is e-mailed it, "
            "and without it they cannot know what to send.", field="note"
        )
    if wanted == S.DECLINED:
        if decline_reason not in DECLINE_REASONS:
            raise TransitionRefused(
                current, wanted, "Say why the other institution declined: study does not exist, "
                "clinically inappropriate, or other (with their words)."
            )
        if decline_reason == "other" and not note.strip():
            raise TransitionRefused(current, wanted, "Give the other institution's reason for declining.")
        req.decline_reason = decline_reason
    req.status = wanted
    req.status_changed_at = utcnow()
    req.status_note = note.strip()
    text = f"Status changed from {current.value} to {wanted.value}."
    if wanted == S.DECLINED:
        text += f" Reason: {DECLINE_REASONS[decline_reason]}."
    if note.strip():
        text += f" {note.strip()}"
    db.session.add(Message(request_id=req.id, author_id=actor_id, kind=MessageKind.SYSTEM.value, body=text))
    audit.record(
        audit.Action.STATUS_CHANGE,
        request_id=req.id,
        user_id=actor_id,
        actor="" if actor_id is not None else actor,
        detail=f"{req.call_ref} {current.value} -> {wanted.value}",
    )
    from app.workflow import notices

    notices.on_transition(req, current, wanted)
