"""Instances the gateway refused: one row each, listed on Arrivals, purged after 15 days.

The gateway SCP (`app/dicom/scp.py`) moves a refused instance to its quarantine folder
with a `.reason.txt` beside it and answers the sender with a failure status; its
`on_quarantined` callback (wired in `worker.py`) records the row here through
`app.transfers.inbound.record_quarantined`. Every text column is the sender's, untrusted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from app import audit
from app.extensions import Model, db
from app.timeutil import utcnow

log = logging.getLogger("iep.gateway")

# Appendix 1 "Purged": nothing stays on the gateway more than 15 days, refused files included.
QUARANTINE_KEEP = timedelta(days=15)


class QuarantinedFile(Model):
    """An instance the gateway refused (malformed, missing attributes, not DICOM)."""

    __tablename__ = "quarantined_files"
    # Serves the desk's count and list (unpurged, newest first) and the purge's cutoff.
    __table_args__ = (sa.Index("ix_quarantined_files_purged_at_received_at", "purged_at", "received_at"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    sender_ae: so.Mapped[str] = so.mapped_column(sa.String(16), default="")
    received_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # From the header when it could be read; empty otherwise.
    patient_name: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    patient_id: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    study_uid: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    reason: so.Mapped[str] = so.mapped_column(sa.String(300), default="")
    path: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    purged_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))

    def files(self) -> list[Path]:
        """The quarantined file and its `.reason.txt` (see `app.dicom.scp.quarantine`)."""
        if not self.path:
            return []
        data = Path(self.path)
        return [data, data.with_name(data.stem + ".reason.txt")]


def unpurged() -> sa.ColumnElement[bool]:
    return QuarantinedFile.purged_at.is_(None)


def refused_files(limit: int = 200) -> list[QuarantinedFile]:
    """The newest refused files still on the gateway."""
    return list(db.session.scalars(
        sa.select(QuarantinedFile).where(unpurged())
        .order_by(QuarantinedFile.received_at.desc(), QuarantinedFile.id.desc()).limit(limit)
    ))


def purge_quarantine() -> int:
    """Maintenance job: delete refused files 15 days after arrival; mark their rows purged.

    Idempotent: a purged row is skipped, a file already gone is no error, and each row is
    committed with its audit event, so a run cut short resumes where it stopped.
    """
    from app.queues import job_context

    cutoff = utcnow() - QUARANTINE_KEEP
    purged = 0
    with job_context():
        ids = list(db.session.scalars(
            sa.select(QuarantinedFile.id).where(unpurged(), QuarantinedFile.received_at < cutoff)
            .order_by(QuarantinedFile.id)
        ))
        for row_id in ids:
            row = db.session.get(QuarantinedFile, row_id)
            if row is None or row.purged_at is not None:
                continue
            for path in row.files():
                path.unlink(missing_ok=True)
            row.purged_at = utcnow()
            audit.record(audit.Action.PURGE, user_id=None, actor=audit.SYSTEM_PURGE,
                         detail=f"quarantined file {row.id} (refused by the gateway) purged after 15 days")
            db.session.commit()
            purged += 1
    if purged:
        log.info("purged %s quarantined file(s)", purged)
    return purged


def refused_arrivals() -> int:
    """Instances the gateway refused, still in quarantine (shown in Action Required and on
    Arrivals): one indexed count."""
    return db.session.scalar(
        sa.select(sa.func.count(QuarantinedFile.id)).where(QuarantinedFile.purged_at.is_(None))
    ) or 0
