"""Messages on a request, and the e-mail outbox."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.auth.models import User
from app.extensions import Model
from app.timeutil import utcnow


class MessageKind(enum.StrEnum):
    MESSAGE = "message"  # between the requester and the desk
    INTERNAL = "internal"  # desk-only note
    INSTITUTION = "institution"  # what the other institution said (shown to both)
    SYSTEM = "system"  # written by the desk itself (status changes, notices)
    CHANGE = "change"  # the requester corrected the request's fields: old -> new (shown to both)


class Message(Model):
    __tablename__ = "messages"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True
    )
    author_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    kind: so.Mapped[str] = so.mapped_column(sa.String(20), default=MessageKind.MESSAGE.value)
    body: so.Mapped[str] = so.mapped_column(sa.Text)
    created_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )

    author: so.Mapped[User | None] = so.relationship()

    # The desk's "the requester replied" (Action Required and the rows' badge): one probe
    # of the index per request, without reading the messages.
    __table_args__ = (sa.Index("ix_messages_request_kind_author", "request_id", "kind", "author_id", "created_at"),)

    @property
    def internal(self) -> bool:
        return self.kind == MessageKind.INTERNAL.value


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # refused for good, or given up after MAX_ATTEMPTS: the desk sends it again


class OutboxEmail(Model):
    """An e-mail to send. Rows stay until sent; a failed send is retried, never lost. A
    mail the server refuses for good (or that failed for a day) waits as `failed` on the
    desk's "E-mail not delivered" page until someone sends it again."""

    __tablename__ = "outbox_emails"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("requests.id"), index=True)
    # Makes queueing idempotent: the same notice for the same event is queued once.
    dedup_key: so.Mapped[str | None] = so.mapped_column(sa.String(200), unique=True)
    # Which notice it carries ("Delivered", "export-sent", "desk-message"...): the sender
    # acts on some once they are sent (notices.on_sent; issue 13.5). None: no notice.
    event: so.Mapped[str | None] = so.mapped_column(sa.String(40))
    to_addr: so.Mapped[str] = so.mapped_column(sa.String(254))
    subject: so.Mapped[str] = so.mapped_column(sa.String(200))
    body: so.Mapped[str] = so.mapped_column(sa.Text)
    status: so.Mapped[str] = so.mapped_column(sa.String(10), default=OutboxStatus.PENDING.value, index=True)
    attempts: so.Mapped[int] = so.mapped_column(default=0)
    last_error: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    next_attempt_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    sent_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
