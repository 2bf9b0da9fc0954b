"""DICOM nodes, transfers and their instances, inbound studies, RIS entries.

The database is the truth for every transfer (DESIGN "Transfers"): RQ carries only a
transfer's id; the row holds the nodes, the studies, progress, attempts and the last
error, and each instance's own row says whether it was sent and whether the
destination confirmed it. A re-run therefore resumes, never repeats.
"""

from __future__ import annotations

import enum
from datetime import date, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.extensions import Model
from app.requests.models import Institution, Request, str_enum
from app.requests.statuses import Priority
from app.timeutil import utcnow


class NodeRole(enum.StrEnum):
    LOCAL_PACS = "local_pacs"
    GATEWAY = "gateway"
    REMOTE = "remote"

    @property
    def label(self) -> str:
        return {"local_pacs": "Local PACS", "gateway": "Exchange gateway", "remote": "Remote hospital"}[self.value]


class DicomNode(Model):
    __tablename__ = "dicom_nodes"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(120), unique=True)
    ae_title: so.Mapped[str] = so.mapped_column(sa.String(16))
    host: so.Mapped[str] = so.mapped_column(sa.String(255))
    port: so.Mapped[int]
    role: so.Mapped[str] = so.mapped_column(sa.String(20), default=NodeRole.REMOTE.value)
    institution_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("institutions.id"))
    # Whether the node answers our C-GET (else we use C-MOVE to our own AE).
    supports_get: so.Mapped[bool] = so.mapped_column(default=True)
    active: so.Mapped[bool] = so.mapped_column(default=True)
    last_echo_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    last_echo_result: so.Mapped[str] = so.mapped_column(sa.String(300), default="")

    institution: so.Mapped[Institution | None] = so.relationship()


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"  # export / trauma: local PACS -> destination
    INBOUND = "inbound"  # gateway copy -> local PACS (import)
    PULL = "pull"  # remote node -> gateway store (direct pull of an import)


class TransferState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    VERIFYING = "verifying"
    WAITING_CONFIRMATION = "waiting_confirmation"  # import: PAS mismatch, analyst decides
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Queued, running or verifying: a job has it, or will."""
        return self in ACTIVE_STATES

    @property
    def unfinished(self) -> bool:
        """Active, or waiting for the analyst's Confirm (which resumes this same transfer)."""
        return self in UNFINISHED_STATES


# The one definition of "active" and "unfinished": Python (`in`) and SQL (`in_()`) alike.
ACTIVE_STATES = (TransferState.QUEUED, TransferState.RUNNING, TransferState.VERIFYING)
UNFINISHED_STATES = (*ACTIVE_STATES, TransferState.WAITING_CONFIRMATION)

# One unfinished transfer per (request, direction, destination, study set) (issue 8.8):
# a second Send or "Download to PACS" shows the one under way instead of starting another.
_UNFINISHED_SQL = sa.text("state IN (" + ", ".join(f"'{s.value}'" for s in UNFINISHED_STATES) + ")")


class Transfer(Model):
    __tablename__ = "transfers"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("requests.id"), index=True)
    direction: so.Mapped[Direction] = so.mapped_column(str_enum(Direction, "direction", length=10))
    priority: so.Mapped[Priority] = so.mapped_column(str_enum(Priority, "priority"))
    state: so.Mapped[TransferState] = so.mapped_column(
        str_enum(TransferState, "state", length=24), default=TransferState.QUEUED, index=True
    )
    source_node_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("dicom_nodes.id"))
    dest_node_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("dicom_nodes.id"))
    study_uids: so.Mapped[list[str]] = so.mapped_column(sa.JSON, default=list)
    instances_total: so.Mapped[int] = so.mapped_column(default=0)
    instances_done: so.Mapped[int] = so.mapped_column(default=0)
    instances_confirmed: so.Mapped[int] = so.mapped_column(default=0)
    bytes_total: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    bytes_done: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    attempts: so.Mapped[int] = so.mapped_column(default=0)
    max_attempts: so.Mapped[int] = so.mapped_column(default=5)
    last_error: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    job_id: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    # A lease, not a lock in Redis: whoever holds an unexpired lease runs the transfer.
    # It survives a Redis restart, and expires by itself when a worker is killed.
    lease_token: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    lease_until: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True), index=True)
    cancel_requested: so.Mapped[bool] = so.mapped_column(default=False)
    not_before: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    created_by_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("users.id"))
    # Indexed: the compliance report counts the transfers started in a period.
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow, index=True)
    started_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    # Heartbeat: moved on every instance; the watchdog flags a transfer that stops moving.
    progressed_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True), index=True)
    finished_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    stalled: so.Mapped[bool] = so.mapped_column(default=False)
    # Import: the analyst saw the sender's details beside the register's and went on.
    mismatch_accepted: so.Mapped[bool] = so.mapped_column(default=False)
    # Import: the analyst chose "send what has arrived" although the study is not known
    # complete (audited); the RIS entry and the Delivered e-mail say it is partial.
    partial_ok: so.Mapped[bool] = so.mapped_column(default=False)
    phase: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    # While an export retrieves a study by C-MOVE, the instances our gateway receives for
    # this study go to this transfer's staging, never to the import arrivals (issue 8.4).
    moving_study_uid: so.Mapped[str] = so.mapped_column(sa.String(64), default="", index=True)
    # Report to send with an export (typed text or an uploaded PDF kept on disk).
    report_text: so.Mapped[str] = so.mapped_column(sa.Text, default="")
    report_pdf_path: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    # The study set (sha1 of the sorted, de-duplicated Study Instance UIDs) and the
    # destination id (0 for a pull, whose destination is the gateway): with request and
    # direction, what may have only one unfinished transfer. A NULL column would let
    # duplicates through a unique index, hence dest_key beside dest_node_id.
    study_key: so.Mapped[str] = so.mapped_column(sa.String(40), default="")
    dest_key: so.Mapped[int] = so.mapped_column(default=0)

    request: so.Mapped[Request | None] = so.relationship()
    source_node: so.Mapped[DicomNode | None] = so.relationship(foreign_keys=[source_node_id])
    dest_node: so.Mapped[DicomNode | None] = so.relationship(foreign_keys=[dest_node_id])

    # Two presses at the same instant cannot both win: the database refuses the second.
    # Transfers without a request (NULL request_id) are not covered by the rule.
    __table_args__ = (
        sa.Index(
            "uq_transfers_one_unfinished", "request_id", "direction", "dest_key", "study_key", unique=True,
            sqlite_where=_UNFINISHED_SQL, postgresql_where=_UNFINISHED_SQL,
        ),
    )

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_unfinished(self) -> bool:
        return self.state in UNFINISHED_STATES


class TransferItem(Model):
    """One instance of a transfer: where its file is, and how far it got."""

    __tablename__ = "transfer_items"
    __table_args__ = (sa.UniqueConstraint("transfer_id", "sop_uid"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    transfer_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("transfers.id", ondelete="CASCADE"), index=True)
    study_uid: so.Mapped[str] = so.mapped_column(sa.String(64))
    # The SOP Instance UID, prefixed "report-" / "fixed-" for instances the desk made.
    sop_uid: so.Mapped[str] = so.mapped_column(sa.String(80))
    # What the source listed (C-FIND, IMAGE level) — the desk names a missing instance by
    # these (issue 8.7). Empty for instances known only from a file.
    series_uid: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    series_number: so.Mapped[str] = so.mapped_column(sa.String(12), default="")
    series_description: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    instance_number: so.Mapped[str] = so.mapped_column(sa.String(12), default="")
    # Empty while the instance is listed at the source but not yet here.
    path: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    sent: so.Mapped[bool] = so.mapped_column(default=False)
    confirmed: so.Mapped[bool] = so.mapped_column(default=False)
    error: so.Mapped[str] = so.mapped_column(sa.String(300), default="")


class InboundStudy(Model):
    """A study received by the gateway SCP, matched (or not) to an import request."""

    __tablename__ = "inbound_studies"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    study_uid: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    request_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("requests.id"), index=True)
    sender_ae: so.Mapped[str] = so.mapped_column(sa.String(16), default="")
    patient_id: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    issuer_of_patient_id: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    patient_name: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    birth_date: so.Mapped[str] = so.mapped_column(sa.String(8), default="")
    other_ids: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    accession: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    study_date: so.Mapped[str] = so.mapped_column(sa.String(8), default="")
    description: so.Mapped[str] = so.mapped_column(sa.String(200), default="")
    modalities: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    instances: so.Mapped[int] = so.mapped_column(default=0)
    bytes: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    folder: so.Mapped[str] = so.mapped_column(sa.String(500), default="")
    received_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    last_received_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # How the desk knows a study has finished arriving (issue 8.3): a pull that checked
    # every instance the remote listed sets `complete_at`; a push is complete once the
    # sender released its association and nothing came for ARRIVAL_QUIET_SECONDS.
    complete_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    sender_done_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    sender_released: so.Mapped[bool] = so.mapped_column(default=False)
    delivered_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    purged_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    purge_reason: so.Mapped[str] = so.mapped_column(sa.String(300), default="")

    request: so.Mapped[Request | None] = so.relationship()


class RisEntry(Model):
    """One imported examination recorded on RIS (guideline 2.3 f): unique per study."""

    __tablename__ = "ris_entries"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    request_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("requests.id"), index=True)
    study_uid: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    accession: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    exam_code: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    # The date the images were acquired, never the transfer date (guideline 2.3 f).
    event_date: so.Mapped[date | None] = so.mapped_column(sa.Date)
    s_number: so.Mapped[str] = so.mapped_column(sa.String(8))
    # The analyst chose to send what had arrived: RIS says the study may be incomplete.
    partial: so.Mapped[bool] = so.mapped_column(default=False)
    note: so.Mapped[str] = so.mapped_column(sa.String(300), default="")
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True), default=utcnow)
    # The fix-up, as the request page shows it (issue 13.9): the sender's Patient ID and
    # issuer, which PACS now files under `s_number` (kept in Other Patient IDs Sequence).
    sender_patient_id: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    sender_issuer: so.Mapped[str] = so.mapped_column(sa.String(64), default="")
    # Where the exam code came from (exams.CodeSource), and when neither the sender's study nor
    # an exam line of the request gave one: flagged for the desk to enter on CRIS by hand.
    code_source: so.Mapped[str] = so.mapped_column(sa.String(20), default="")
    code_missing: so.Mapped[bool] = so.mapped_column(default=False)
    code_note: so.Mapped[str] = so.mapped_column(sa.String(300), default="")
