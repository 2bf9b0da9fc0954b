"""The audit trail: who did what, when, to which request. Append-only.

Rows are only ever inserted: the ORM refuses updates and deletes, and the migrations add
database triggers that refuse them too (and TRUNCATE, on PostgreSQL), so no code path (or SQL
console) rewrites history. On PostgreSQL the desk's own role may only read and append here,
and owns no table, so it cannot drop the triggers (README "Running in production").
Details never hold patient data, only call references and ids (guideline 2.7 a).
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import has_request_context, request
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


class AuditEvent(Model):
    __tablename__ = "audit_events"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    user_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    # For failed sign-ins there is no user: the name that was tried is kept here.
    actor: so.Mapped[str] = so.mapped_column(sa.String(254), default="")
    action: so.Mapped[str] = so.mapped_column(sa.String(40), index=True)
    request_id: so.Mapped[int | None] = so.mapped_column(
        sa.ForeignKey("requests.id"), index=True
    )
    detail: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    remote_addr: so.Mapped[str] = so.mapped_column(sa.String(64), default="")


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
    """Add an audit event to the current session (committed with the caller's work)."""
    if user_id is None and has_request_context() and current_user.is_authenticated:
        user_id = current_user.id
        actor = actor or current_user.email
    event = AuditEvent(
        action=str(action),
        user_id=user_id,
        actor=actor[:254],
        request_id=request_id,
        detail=detail[:500],
        remote_addr=(request.remote_addr or "")[:64] if has_request_context() else "",
    )
    db.session.add(event)
    return event
