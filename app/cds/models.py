"""A CD's upload and its files.

The database is the truth for an upload as for a transfer: which files the browser said
the CD holds, how many bytes of each have arrived (so a dropped connection or a closed
tab resumes at the right offset), and what the worker's scan found. A file is stored
under its row id, never under the name the browser gave (`storage`).
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.extensions import Model
from app.requests.models import Request, str_enum
from app.timeutil import utcnow
from app.transfers.models import Transfer


class CdUploadState(enum.StrEnum):
    UPLOADING = "uploading"  # files arriving; resumable
    SCANNING = "scanning"  # every file is here; a worker is reading them
    SCANNED = "scanned"  # the scan's result is in scan_json: ready to match and send
    SENDING = "sending"  # the chosen studies are on their way to PACS (a transfer)
    SENT = "sent"  # the transfer delivered them
    FAILED = "failed"  # the scan could not finish (the reason in `error`)
    PURGED = "purged"  # the files are gone (15 days after delivery, or replaced)

    @property
    def label(self) -> str:
        return {
            "uploading": "Uploading",
            "scanning": "Scanning",
            "scanned": "Scanned",
            "sending": "Sending to PACS",
            "sent": "Sent to PACS",
            "failed": "Scan failed",
            "purged": "Purged",
        }[self.value]


class CdUpload(Model):
    __tablename__ = "cd_uploads"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("requests.id"), index=True)
    created_by_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    state: so.Mapped[CdUploadState] = so.mapped_column(
        str_enum(CdUploadState, "cd_upload_state", length=12), default=CdUploadState.UPLOADING, index=True
    )
    # What the browser announced before sending: the upload is complete when every file
    # announced has all its bytes.
    files_expected: so.Mapped[int] = so.mapped_column(default=0)
    bytes_expected: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    bytes_received: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    completed_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    # The scan (a worker's): files read so far, out of how many, and the result as JSON
    # (app.cds.scan.ScanResult.to_json); `error` says why a scan failed.
    scan_done: so.Mapped[int] = so.mapped_column(default=0)
    scan_total: so.Mapped[int] = so.mapped_column(default=0)
    scan_json: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    scanned_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    error: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    # The transfer that sends the chosen studies to PACS.
    transfer_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("transfers.id"))
    purged_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    purge_reason: so.Mapped[str] = so.mapped_column(sa.String(300), default="")

    request: so.Mapped[Request] = so.relationship()
    transfer: so.Mapped[Transfer | None] = so.relationship()
    files: so.Mapped[list[CdFile]] = so.relationship(
        back_populates="upload", cascade="all, delete-orphan", order_by="CdFile.id"
    )


class CdFile(Model):
    """One file of a CD: its name on the CD (text only, shown escaped) and its bytes so far."""

    __tablename__ = "cd_files"
    __table_args__ = (sa.UniqueConstraint("upload_id", "relpath"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    upload_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("cd_uploads.id", ondelete="CASCADE"), index=True)
    relpath: so.Mapped[str] = so.mapped_column(sa.String(500))
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    received: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    # Why the desk will not take this file at all (e.g. past the size limit): listed with
    # the scan's problems, never stored.
    refused: so.Mapped[str] = so.mapped_column(sa.String(300), default="")

    upload: so.Mapped[CdUpload] = so.relationship(back_populates="files")

    @property
    def complete(self) -> bool:
        return bool(self.refused) or self.received >= self.size
