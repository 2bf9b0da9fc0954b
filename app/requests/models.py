"""Requests, their examination lines, institutions and call references."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.auth.models import User
from app.extensions import Model
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import utcnow

if TYPE_CHECKING:  # the PAS register imports this package, never the other way round
    from app.patients.models import Patient


def str_enum(enum_cls: type, name: str, length: int = 20) -> sa.Enum:
    """A column type holding `enum_cls` members, stored as their values.

    VARCHAR plus a CHECK constraint: portable, and no PostgreSQL ENUM type to migrate.
    """
    return sa.Enum(
        enum_cls,
        native_enum=False,
        length=length,
        create_constraint=True,
        values_callable=lambda members: [m.value for m in members],
        name=name,
    )


class Institution(Model):
    """An NHS or private hospital we exchange images with.

    The DICOM node(s) it is reached by point here (`DicomNode.institution_id`): the one
    link, set from either page of the admin (issue 14.2, 14.4)."""

    __tablename__ = "institutions"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(160), unique=True)
    # Which of its hospitals, in its own words (e.g. "Glenfield", "Royal Infirmary").
    site: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    # The contact the desk's notices go to (an export's receiving institution, 2.6 b).
    email: so.Mapped[str] = so.mapped_column(sa.String(254), default="")
    # A deactivated institution is no longer offered on the forms; the requests that name
    # it keep it (a referenced institution is deactivated, never deleted).
    active: so.Mapped[bool] = so.mapped_column(default=True)

    def __repr__(self) -> str:
        return f"<Institution {self.id}>"


class CallRefCounter(Model):
    """The last call reference number issued in a year."""

    __tablename__ = "call_ref_counters"

    year: so.Mapped[int] = so.mapped_column(primary_key=True, autoincrement=False)
    last: so.Mapped[int] = so.mapped_column(default=0)


# What the queue reads of each request a search finds (its tabs' counts, its page's order).
_QUEUE_ROW = ("status", "priority", "requester_id", "status_changed_at", "created_at")


class Request(Model):
    """One import, export, CD-import or trauma request, from submission to completion.

    Columns common to every kind come first; kind-specific ones are nullable. The
    patient's details are kept as submitted (the form is the formal written request,
    guideline 2.7 a) beside the link to the PAS record they were checked against.
    """

    __tablename__ = "requests"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    call_ref: so.Mapped[str] = so.mapped_column(sa.String(20), unique=True)
    kind: so.Mapped[Kind] = so.mapped_column(str_enum(Kind, "kind"), index=True)
    status: so.Mapped[Status] = so.mapped_column(
        str_enum(Status, "status"), default=Status.NEW, index=True
    )
    priority: so.Mapped[Priority] = so.mapped_column(
        str_enum(Priority, "priority"), default=Priority.STANDARD, index=True
    )
    priority_reason: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    requester_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    created_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    updated_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    # The form's one-time key: a double-clicked Submit finds the request it already made.
    submission_key: so.Mapped[str | None] = so.mapped_column(sa.String(36), unique=True)
    # Optimistic locking for the desk's inline edits.
    version: so.Mapped[int] = so.mapped_column(default=1)

    # Patient, as submitted, and the PAS record it was checked against.
    patient_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("patients.id"), index=True)
    s_number: so.Mapped[str] = so.mapped_column(sa.String(8), index=True)
    nhs_number: so.Mapped[str] = so.mapped_column(sa.String(10), default="", index=True)
    # Appendix 4 step 8: a trauma transfer without an NHS number says why.
    no_nhs_reason: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    family_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    given_name: so.Mapped[str] = so.mapped_column(sa.String(80))
    dob: so.Mapped[date]
    gender: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    address_line1: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    address_line2: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    town: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    county: so.Mapped[str] = so.mapped_column(sa.String(80), default="")
    postcode: so.Mapped[str] = so.mapped_column(sa.String(10), default="")

    # UHL staff contact (every form).
    contact_name: so.Mapped[str] = so.mapped_column(sa.String(120))
    contact_phone: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    contact_email: so.Mapped[str] = so.mapped_column(sa.String(254), default="")
    comments: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    required_by: so.Mapped[date | None]

    # Import (Appendix 2; Appendix 1 steps 1-6): the other institution sends.
    # Export (Appendix 3): the other institution receives.
    institution_id: so.Mapped[int | None] = so.mapped_column(
        sa.ForeignKey("institutions.id"), index=True
    )
    institution_name: so.Mapped[str] = so.mapped_column(sa.String(160), default="")
    requesting_clinician: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    consultant: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    department: so.Mapped[str] = so.mapped_column(sa.String(120), default="")

    # Export: the receiving site's contact.
    site_contact_name: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    site_contact_position: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    site_contact_phone: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    site_contact_email: so.Mapped[str] = so.mapped_column(sa.String(254), default="")

    # CD import (Appendix 6).
    cd_count: so.Mapped[int | None]
    internal_post_address: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    drop_off_site: so.Mapped[str] = so.mapped_column(sa.String(10), default="")

    # Working the request (the desk).
    assigned_to_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"), index=True)
    status_changed_at: so.Mapped[datetime] = so.mapped_column(
        sa.DateTime(timezone=True), default=utcnow, index=True
    )
    # Guideline 2.5: why the other institution declined (and its own words).
    decline_reason: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    status_note: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    # Set at submission when the same patient and examination were already requested.
    duplicate_of_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("requests.id"))

    # "For use by MBP" (Appendix 2, 3).
    mbp_call_ref: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    imaging_uploaded_by: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    images_fixed_up_by: so.Mapped[str] = so.mapped_column(sa.String(120), default="")
    date_imaging_sent: so.Mapped[date | None]

    requester: so.Mapped[User] = so.relationship(foreign_keys=[requester_id])
    assigned_to: so.Mapped[User | None] = so.relationship(foreign_keys=[assigned_to_id])
    duplicate_of: so.Mapped[Request | None] = so.relationship(remote_side=[id])
    patient: so.Mapped[Patient] = so.relationship("Patient")
    institution: so.Mapped[Institution | None] = so.relationship()
    exams: so.Mapped[list[ExamLine]] = so.relationship(
        back_populates="request",
        order_by="ExamLine.position",
        cascade="all, delete-orphan",
    )

    __mapper_args__ = {"version_id_col": version}
    # The desk's queue: filters by status/kind/assignee, newest first, keyset pages on
    # (created_at, id); patient-name search by prefix of the upper-cased family name.
    __table_args__ = (
        sa.Index("ix_requests_created_id", "created_at", "id"),
        # The queue's tabs by status, newest first, and what Action Required checks of
        # each row (issue 15.4): a page and each tab's count read this index alone.
        sa.Index("ix_requests_status_created_queue", "status", "created_at", "id", "priority", "requester_id",
                 "status_changed_at"),
        sa.Index("ix_requests_kind_created_id", "kind", "created_at", "id"),
        sa.Index("ix_requests_assigned_created_id", "assigned_to_id", "created_at", "id"),
        sa.Index("ix_requests_priority_status", "priority", "status"),
        sa.Index("ix_requests_institution_name", "institution_name"),
        sa.Index("ix_requests_updated_at", "updated_at"),
        # Sorting by patient, and (SQLite) a name search: what the queue reads of each row
        # it finds is in the index, so a search reads the index alone (migration 0016).
        sa.Index("ix_requests_family_name_queue", sa.text("upper(family_name)"), "id", *_QUEUE_ROW),
        # PostgreSQL's name search: text_pattern_ops serves LIKE 'SMI%' (in any collation)
        # but cannot sort. With family_name in it, PostgreSQL can read it alone. SQLite
        # does without: given it, SQLite reads the table again instead of the wide index.
        sa.Index(
            "ix_requests_family_name_upper",
            sa.text("upper(family_name)"),
            postgresql_ops={"upper(family_name)": "text_pattern_ops"},
            postgresql_include=["family_name", "id", *_QUEUE_ROW],
        ).ddl_if(dialect="postgresql"),
    )

    @property
    def patient_display_name(self) -> str:
        return f"{self.family_name.upper()}, {self.given_name}"

    def __repr__(self) -> str:
        # Call reference only: no patient data in logs (PITFALLS "Web").
        return f"<Request {self.call_ref}>"


class ExamLine(Model):
    """One examination asked for: its date, what it is, and its exam code if known."""

    __tablename__ = "exam_lines"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True
    )
    position: so.Mapped[int] = so.mapped_column(default=0)
    exam_date: so.Mapped[date]
    description: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    exam_code: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    # The PACS study this line is, when the desk picked it (a trauma transfer's studies).
    study_uid: so.Mapped[str] = so.mapped_column(sa.String(64), default="")

    request: so.Mapped[Request] = so.relationship(back_populates="exams")
