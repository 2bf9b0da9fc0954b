"""The analyst's inline edit of one request, as plain values (no forms, no Flask request).

Like every service, it changes the session and never commits: the view commits once, or
rolls back on a refusal (README, "Layout").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from app import audit
from app.ids import parse_id
from app.requests.models import Request
from app.requests.statuses import Status
from app.workflow.machine import transition

MBP_FIELDS = ("mbp_call_ref", "imaging_uploaded_by", "images_fixed_up_by", "date_imaging_sent")


@dataclass(frozen=True)
class EditValues:
    """What the editor submitted, as text (and one date), unvalidated beyond the form."""

    version: str
    status: str
    decline_reason: str = ""
    note: str = ""
    assigned_to: str = ""  # a user id, or "" for nobody
    mbp_call_ref: str = ""
    imaging_uploaded_by: str = ""
    images_fixed_up_by: str = ""
    date_imaging_sent: date | None = None


class StaleEdit(Exception):
    """The request was saved by someone else since this editor was opened."""


def apply_edit(req: Request, values: EditValues, *, actor_id: int) -> list[str]:
    """Apply an edit to `req`: the "For use by MBP" fields, the assignee, then the status
    (through the status machine), and audit what changed: the names of the fields, not
    their values (the request's page shows those; issue 11.9), with the analyst
    (`actor_id`). Returns the names changed besides the status. Never commits.

    Raises StaleEdit, changing nothing, when `values.version` is not the request's
    version; TransitionRefused (from the status machine) when the status may not move so:
    the session may then hold the other changes, and the caller rolls back.
    """
    if values.version != str(req.version):
        raise StaleEdit(req.call_ref)
    submitted: dict[str, object] = {
        name: getattr(values, name) if name == "date_imaging_sent" else (getattr(values, name) or "").strip()
        for name in MBP_FIELDS
    }
    changed = [name for name, value in submitted.items() if value != getattr(req, name)]
    for name in changed:
        setattr(req, name, submitted[name])
    assignee = parse_id(values.assigned_to)
    if assignee != req.assigned_to_id:
        req.assigned_to_id = assignee
        changed.append("assigned_to")
    wanted = Status(values.status) if values.status in {s.value for s in Status} else req.status
    transition(req, wanted, actor_id=actor_id, note=values.note or "", decline_reason=values.decline_reason or "")
    if changed:
        audit.record(audit.Action.EDIT, request_id=req.id, user_id=actor_id,
                     detail=f"{req.call_ref} changed {', '.join(changed)}")
    return changed
