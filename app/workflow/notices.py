"""Which e-mails a status change sends (guideline 2.3 g, 2.6 b, 2.4 d, 2.5).

Called by `machine.transition` inside the caller's transaction; it only adds outbox rows
(`mail.queue_email`), which are sent after the commit. The status change's own SYSTEM
message is written by `transition`; nothing here duplicates it.

| new status       | to                        | says                                     |
| ---------------- | ------------------------- | ---------------------------------------- |
| Awaiting Details | requester                 | what is missing (the analyst's note)     |
| Declined         | requester                 | the other institution's reason (2.5)     |
| Cancelled        | requester                 | why (e.g. the 14-day rule, 2.4 d)        |
| Collected        | requester                 | the CDs left the reception (Appendix 5)  |
| Delivered        | requester                 | images on PACS / sent, call ref (2.3 g)  |
| export sent      | receiving site + requester| images sent via IEP, call ref (2.6 b)    |

Completed sends nothing: it *is* the requester having been notified (DESIGN). The
Delivered notice, once the sender has handed it over (`on_sent`), moves the request from
Delivered to Completed; a requester with no valid address leaves it Delivered, with a
desk-only note saying why. A desk message to the requester is e-mailed too
(`on_desk_message`; issue 13.6).

"Export sent" is an export reaching On IEP, or Delivered without passing On IEP first,
so each send notifies the receiving institution once.

Subjects carry the call reference only. The patient's name appears only in mail to the
requester (a UHL colleague who asked for this patient); the receiving institution is
told the call reference, which its IEP transaction carries, and nothing about the patient.
Every notice is deduplicated on (call ref, status, time of the change, recipient): the
same change never queues the same notice twice, while a request that comes back to a
status later (asked for details a second time, say) is notified again.
"""

from __future__ import annotations

import hashlib
import logging

from app import audit
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.workflow import mail
from app.workflow.models import Message, MessageKind, OutboxEmail

log = logging.getLogger("iep.notices")

S = Status

# status -> (template, subject after the call reference)
_REQUESTER_NOTICES: dict[Status, tuple[str, str]] = {
    S.AWAITING_DETAILS: ("awaiting_details", "details needed for your image request"),
    S.DECLINED: ("declined", "your image request was declined"),
    S.CANCELLED: ("cancelled", "your image request was cancelled"),
    # The CD round: the requester learns the CDs they handed in were picked up. Awaiting
    # Drop-off (the start) and Uploaded (the desk's own step) send nothing.
    S.COLLECTED: ("collected", "your CDs were collected"),
    S.DELIVERED: ("delivered", "images delivered"),
}
DESK_MESSAGE = "desk-message"  # the event of a desk message e-mailed to the requester


def _requester_address(req: Request) -> str:
    return (req.contact_email or (req.requester.email if req.requester else "") or "").strip()


def _institution_addresses(req: Request) -> list[str]:
    found: list[str] = []
    for addr in (req.site_contact_email, req.institution.email if req.institution else ""):
        addr = (addr or "").strip()
        if addr and addr.lower() not in {a.lower() for a in found}:
            found.append(addr)
    return found


def dedup_key(req: Request, event: str, recipient: str) -> str:
    """`IEP-2026-000123:Delivered:<time of the change>:<recipient hash>` (fits 200 chars)."""
    stamp = req.status_changed_at.strftime("%Y%m%dT%H%M%S.%f") if req.status_changed_at else "-"
    who = hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:16]
    return f"{req.call_ref}:{event}:{stamp}:{who}"


def _reason(req: Request) -> str:
    from app.workflow.machine import DECLINE_REASONS

    return DECLINE_REASONS.get(req.decline_reason, "")


def _common(req: Request) -> dict[str, object]:
    """Values any recipient may see: no patient data, no free text typed at the desk."""
    return {
        "call_ref": req.call_ref,
        "kind": req.kind.value,
        "kind_label": req.kind.label,
        "status": req.status.value,
        "institution_name": req.institution_name or "",
    }


def _for_requester(req: Request) -> dict[str, object]:
    """What the requester's own mail may add: the patient's name and the desk's note."""
    return {
        **_common(req),
        "contact_name": req.contact_name or "",
        "patient_name": req.patient_display_name,
        "note": req.status_note or "",
        "decline_reason": _reason(req),
    }


def _queue(req: Request, to: str, event: str, subject: str, template: str, ctx: dict[str, object],
           once_per: str = "") -> bool:
    """Queue one notice; False when `to` is no address to send it to. Queued once per
    status change, or once per `once_per` (e.g. a message's id) when given."""
    if not mail.valid_address(to):
        # A bad address must not block the status change; the desk sees no e-mail sent.
        log.warning("%s: no valid address for the %s notice; not queued", req.call_ref, event)
        return False
    mail.queue_email(
        to,
        f"{req.call_ref}: {subject}",
        template,
        request=req,
        dedup_key=dedup_key(req, once_per or event, to),
        event=event,
        **ctx,
    )
    return True


def on_transition(req: Request, old: Status, new: Status) -> None:
    """Queue the e-mails that a change from `old` to `new` calls for."""
    common = _common(req)
    requester = _requester_address(req)
    # Only the requester's mail names the patient (they asked for this patient).
    to_requester = _for_requester(req)

    # A trauma transfer is an export to Nottingham: NUH's radiology is told the same way.
    export_sent = req.kind in (Kind.EXPORT, Kind.TRAUMA) and (
        new == S.ON_IEP or (new == S.DELIVERED and old != S.ON_IEP))
    if export_sent:
        # Guideline 2.6 b: the receiving institution and the requester are told.
        for addr in _institution_addresses(req):
            _queue(req, addr, "export-sent", "images sent to you via the Image Exchange Portal",
                   "export_sent_institution", common)
        if new == S.ON_IEP:
            _queue(req, requester, "export-sent", "images sent", "export_sent_requester", to_requester)

    notice = _REQUESTER_NOTICES.get(new)
    if notice is not None:
        template, subject = notice
        if new == S.DELIVERED and req.kind in (Kind.EXPORT, Kind.TRAUMA):
            subject = "images sent"
        queued = _queue(req, requester, new.value, subject, template, to_requester)
        if new == S.DELIVERED and not queued:
            db.session.add(Message(request_id=req.id, kind=MessageKind.INTERNAL.value, body=(
                "The requester was not e-mailed that the images are delivered: the request has no valid e-mail "
                "address (neither its contact e-mail nor the requester's account). It stays Delivered until they "
                "are told: tell them another way, then set it Completed.")))


def on_sent(email: OutboxEmail) -> bool:
    """The sender has handed `email` over: a requester's Delivered notice completes its
    request (Delivered -> Completed, by `audit.SYSTEM_MAIL`). True if it did. Never
    commits; anything else sent changes nothing.

    Idempotent: a request no longer Delivered (completed already, or set by hand) is left."""
    if email.event != S.DELIVERED.value or email.request_id is None:
        return False
    req = db.session.get(Request, email.request_id)
    if req is None or req.status != S.DELIVERED:
        return False
    from app.workflow.machine import transition  # the machine calls this module

    transition(req, S.COMPLETED, actor_id=None, actor=audit.SYSTEM_MAIL,
               note="The requester was e-mailed that the images are delivered.")
    return True


def on_desk_message(req: Request, message: Message, link: str) -> str:
    """E-mail a desk message to the requester (issue 13.6): the subject names the call
    reference, the body holds the message and `link`, the request's page. Returns the
    address it is queued for, or "" when the request has none. Never commits."""
    to = _requester_address(req)
    queued = _queue(req, to, DESK_MESSAGE, "a message from the Image Exchange Desk", "desk_message",
                    {**_for_requester(req), "message": message.body, "link": link}, once_per=f"message-{message.id}")
    return to if queued else ""
