"""The audit trail: who did what, when, to which request. Append-only.

Rows are only ever inserted: the ORM refuses updates and deletes, and the migrations add
database triggers that refuse them too (and TRUNCATE, on PostgreSQL), so no code path (or SQL
console) rewrites history. On PostgreSQL the desk's own role may only read and append here,
and owns no table, so it cannot drop the triggers (README "Running in production").

Every row names who: a user (id, and the e-mail address as `actor`), or, when no person
did it, the part of the system that did (`SYSTEM_*` below, or "cli"). Details hold call
references, ids and field names, never the values of patient fields, with two exceptions:
a search row keeps the search criteria (`criteria`), because "who looked for this
patient" is the question information governance asks of this table (guideline 2.7 a;
issue 11.9). A requester's correction of their request keeps each field's old and new
value for the same reason (app/intake/changes.py; issue 13.7). Viewing this table is audited
too (`AUDIT_VIEWED`, app/admin/auditview.py): such a row keeps the viewer's filters, patient
identifiers included, as a search row keeps its criteria.
The table is access-controlled; the application log is not, and patient
data never goes there (app/logs.py).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import current_app, has_request_context, request, session
from flask_login import current_user

from app.extensions import Model, db
from app.timeutil import utcnow


class Action(enum.StrEnum):
    SIGN_IN = "sign_in"
    SIGN_IN_FAILED = "sign_in_failed"
    SIGN_IN_LOCKED = "sign_in_locked"
    SIGN_IN_UNLOCKED = "sign_in_unlocked"
    SIGN_OUT = "sign_out"
    SUBMIT = "submit"
    VIEW = "view"
    DOWNLOAD_PDF = "download_pdf"
    STATUS_CHANGE = "status_change"
    TRANSFER = "transfer"
    PURGE = "purge"
    EDIT = "edit"
    MESSAGE = "message"
    USER_CREATED = "user_created"
    USER_CHANGED = "user_changed"
    PAS_IMPORT = "pas_import"
    LIST_VIEW = "list_view"  # a list of requests (the desk queue, My requests), no criteria
    SEARCH = "search"  # the same lists with search criteria: the detail keeps them
    ACCESS_DENIED = "access_denied"  # a 403
    CSRF_FAILED = "csrf_failed"  # a form refused for a missing or foreign CSRF token
    CD_UPLOAD = "cd_upload"  # a CD's upload started, finished or was replaced (issue 12)
    CD_SCAN = "cd_scan"  # a worker scanned a CD: what it found, in counts
    CD_SEND = "cd_send"  # the desk confirmed a CD's studies for PACS
    CD_COLLECTED = "cd_collected"  # a CD was collected from a Radiology Reception
    PAS_PREVIEW = "pas_preview"  # a PAS extract uploaded, then checked: counts only (issue 14.3)
    PAS_REFUSED = "pas_refused"  # a PAS extract or its Apply refused: the kind of refusal, no values
    NODE_CHANGED = "node_changed"  # a DICOM node added, edited, (de/re)activated or deleted (issue 14.4)
    INSTITUTION_CHANGED = "institution_changed"  # an institution added, edited, (de/re)activated, deleted (14.2)
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an action's name; a user chose a new password (issue 14.1)
    TRAINING_RECORDED = "training_recorded"  # a training register entry added (issue 14.7)
    TRAINING_DELETED = "training_deleted"  # a wrongly entered one removed; the detail keeps what it said
    AUDIT_VIEWED = "audit_viewed"  # the audit viewer (issue 14.5): the detail keeps its filters


# Who made a change when no person did (issue 11.9: every status change names someone).
SYSTEM_TRANSFER_ENGINE = "system: transfer engine"
SYSTEM_GATEWAY = "system: gateway"  # the storage SCP, and the job that settles its arrivals
SYSTEM_AUTO_DOWNLOAD = "system: auto-download"
SYSTEM_PURGE = "system: purge"
SYSTEM_AUTO_CANCEL = "system: auto-cancel"
SYSTEM_CD_SCAN = "system: CD scan"
SYSTEM_MAIL = "system: mail"  # the sent Delivered notice completes its request (issue 13.5)
CLI = "cli"

DETAIL_MAX = 500  # AuditEvent.detail's length
VALUE_MAX = 100  # one search value in a detail; the form fields are shorter still


class AuditEvent(Model):
    __tablename__ = "audit_events"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    # For failed sign-ins there is no user: the name that was tried is kept here.
    actor: so.Mapped[str] = so.mapped_column(sa.String(254), default="")
    action: so.Mapped[str] = so.mapped_column(sa.String(40))
    request_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("requests.id"))
    detail: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    remote_addr: so.Mapped[str] = so.mapped_column(sa.String(64), default="")

    # The audit viewer reads newest first, filtered by one of these, a page at a time
    # (keyset on (at, id)): each index ends with the order it is read in (migration 0014).
    __table_args__ = (
        sa.Index("ix_audit_events_at_id", "at", "id"),
        sa.Index("ix_audit_events_user_at_id", "user_id", "at", "id"),
        sa.Index("ix_audit_events_request_at_id", "request_id", "at", "id"),
        sa.Index("ix_audit_events_action_at_id", "action", "at", "id"),
        sa.Index("ix_audit_events_actor", "actor"),  # rows with no user: failed sign-ins, the system
        # The compliance report reads a request's status changes (app/admin/report_figures.py).
        sa.Index("ix_audit_events_request_action", "request_id", "action"),
    )


@sa.event.listens_for(AuditEvent, "before_update")
@sa.event.listens_for(AuditEvent, "before_delete")
def _refuse_rewrite(mapper, connection, target):  # noqa: ANN001 - SQLAlchemy signature
    raise PermissionError("the audit trail is append-only")


def record(
    action: Action,
    *,
    request_id: int | None = None,
    detail: str = "",
    user_id: int | None = None,
    actor: str = "",
) -> AuditEvent:
    """Add an audit event to the current session (committed with the caller's work).

    Without `user_id` the signed-in user is who; with a `user_id` and no `actor`, the
    actor is that user's e-mail address, so no row of a person's has a blank name."""
    if user_id is None and has_request_context() and current_user.is_authenticated:
        user_id = current_user.id
        actor = actor or current_user.email
    elif user_id is not None and not actor:
        actor = _email_of(user_id)
    event = AuditEvent(
        action=str(action),
        user_id=user_id,
        actor=_fit(actor, 254),
        request_id=request_id,
        detail=_fit(detail, DETAIL_MAX),
        remote_addr=(request.remote_addr or "")[:64] if has_request_context() else "",
    )
    db.session.add(event)
    return event


def criteria(pairs: Iterable[tuple[str, object]]) -> str:
    """Search criteria for a detail: `name="value"` for each one given, each value on one
    line and at most VALUE_MAX characters."""
    return " ".join(f'{name}="{_fit(str(value), VALUE_MAX)}"' for name, value in pairs if value not in (None, ""))


_SEEN_KEY = "audit_seen"  # session key: digests of the last lists this session was audited seeing
_SEEN_KEEP = 8  # a few browser tabs, each with its own search


def seen_before(view: str) -> bool:
    """True when this session was already audited seeing `view` (a list and its criteria,
    as one string); otherwise note it, and the caller audits it now.

    For lists that poll themselves: the poll of a view the person asked for writes no
    row, yet a poll carrying criteria of its own (a client can send the poll header with
    anything) is audited like a search. The session keeps keyed digests, never the
    criteria: a signed cookie is readable, and an NHS number's plain hash is guessable.
    A poll's answer sets no cookie, so only a person's own requests note anything."""
    key = current_app.secret_key
    secret = key if isinstance(key, bytes) else str(key).encode()
    digest = hmac.new(secret, view.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:24]
    seen = list(session.get(_SEEN_KEY, []))
    if digest in seen:
        return True
    session[_SEEN_KEY] = [*seen, digest][-_SEEN_KEEP:]
    return False


def _email_of(user_id: int) -> str:
    if has_request_context() and current_user.is_authenticated and current_user.id == user_id:
        return str(current_user.email)
    # The users table by name, not app.auth's model: auth imports the audit (test_structure).
    users = sa.table("users", sa.column("id"), sa.column("email"))
    with db.session.no_autoflush:  # the caller's half-done work is not flushed by a look-up
        email = db.session.scalar(sa.select(users.c.email).where(users.c.id == user_id))
    return str(email) if email is not None else f"user {user_id}"


def _fit(text: str, limit: int) -> str:
    """`text` on one line, without control characters (PostgreSQL refuses NUL in text),
    cut to `limit` characters with an ellipsis that shows it was cut."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
