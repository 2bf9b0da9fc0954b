"""The PAS register: patients known to PatientCentre/HISS (guideline 2.2, 2.7 d-e)."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.extensions import Model
from app.timeutil import utcnow


class Patient(Model):
    __tablename__ = "patients"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    s_number: so.Mapped[str] = so.mapped_column(sa.String(8), unique=True)
    nhs_number: so.Mapped[str | None] = so.mapped_column(sa.String(10), index=True)
    family_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    given_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    dob: so.Mapped[date]
    gender: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    address_line1: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    address_line2: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    town: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    county: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    postcode: so.Mapped[str] = so.mapped_column(sa.String(10), default="")
    updated_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    @property
    def display_name(self) -> str:
        return f"{self.family_name.upper()}, {self.given_name}"

    def __repr__(self) -> str:
        return f"<Patient {self.id}>"


class PasExtract(Model):
    """One PAS extract. Uploaded on the admin page: its bytes are kept while a job checks it
    (the preview) and until it is applied, so Apply applies exactly the file previewed. Or
    applied by `pas import`, which keeps no bytes. The page shows the last applied one:
    when, how big, which file, by whom, and what it did."""

    __tablename__ = "pas_extracts"

    CHECKING = "checking"  # the check job is queued or running
    PREVIEWED = "previewed"  # checked: the figures and bad lines are here, Apply is offered
    APPLYING = "applying"  # the apply job is queued or running
    APPLIED = "applied"
    FAILED = "failed"  # a job failed, or the queue was down: upload again
    REPLACED = "replaced"  # its uploader uploaded another before applying this one

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    # The key of an upload, held in its uploader's session as well: Apply names it.
    token: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    state: so.Mapped[str] = so.mapped_column(sa.String(20), index=True)
    file_name: so.Mapped[str] = so.mapped_column(sa.String(255), default="")
    size_bytes: so.Mapped[int] = so.mapped_column(default=0)
    rows: so.Mapped[int] = so.mapped_column(default=0)
    sha256: so.Mapped[str] = so.mapped_column(sa.String(64))
    plan: so.Mapped[str] = so.mapped_column(sa.String(64), default="")  # ExtractCheck.plan at the preview
    content: so.Mapped[bytes | None] = so.mapped_column(sa.LargeBinary)  # until applied
    # The preview's bad lines (they quote the file's values, as the page shows them) and
    # figures beyond the counts: JSON, written by the check job.
    preview_json: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    message: so.Mapped[str] = so.mapped_column(sa.String(500), default="")  # why it failed
    done: so.Mapped[int] = so.mapped_column(default=0)  # progress: lines read of `total`
    total: so.Mapped[int] = so.mapped_column(default=0)
    uploaded_by_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    actor: so.Mapped[str] = so.mapped_column(sa.String(254), default="")  # the e-mail address, or "cli"
    uploaded_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    applied_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True), index=True)
    added: so.Mapped[int] = so.mapped_column(default=0)
    updated: so.Mapped[int] = so.mapped_column(default=0)
    unchanged: so.Mapped[int] = so.mapped_column(default=0)
    rejected: so.Mapped[int] = so.mapped_column(default=0)

    def __repr__(self) -> str:
        return f"<PasExtract {self.id} {self.state}>"
