"""The CD round's queries: which CD is where, and the collection chart (Appendix 5).

No Flask here: plain values for pages and print templates (STYLE habit 8), from a few
queries that do not grow with the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from app import audit
from app.auth.models import User
from app.extensions import db
from app.printing.collections import DROP_OFF_SITES, next_collection_date
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.timeutil import LONDON, as_local

BLANK_ROWS = 6  # Appendix 5: people dropping off a CD the desk has no row for write it in


def default_collection_date(today: date) -> date:
    """The collection day a chart is for: today when today is one, else the next one."""
    return next_collection_date(today - timedelta(days=1))


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The moments a local (London) day starts and ends, in UTC: SQLite compares the
    stored text, which is UTC, so a bound must be too."""
    start = datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=LONDON).astimezone(UTC)
    return start, end


@dataclass(frozen=True)
class Done:
    """Who did a step of the round, and when (local time)."""

    by: str
    at: datetime


@dataclass(frozen=True)
class ChartRow:
    request_id: int
    call_ref: str
    patient_name: str
    s_number: str
    cd_count: int
    contact_name: str  # who the desk expects to drop it off: the form's UHL contact
    submitted_on: date
    site: str
    status: str
    collected: Done | None


@dataclass(frozen=True)
class ChartSection:
    site: str
    site_name: str
    rows: tuple[ChartRow, ...]


def last_done(request_ids: list[int], action: audit.Action, detail_suffix: str = "") -> dict[int, Done]:
    """The latest audit event of `action` for each request (one query): who and when.
    `detail_suffix` narrows it to details ending so (e.g. "-> Uploaded")."""
    if not request_ids:
        return {}
    latest = sa.select(sa.func.max(audit.AuditEvent.id)).where(
        audit.AuditEvent.request_id.in_(request_ids), audit.AuditEvent.action == action.value)
    if detail_suffix:
        latest = latest.where(audit.AuditEvent.detail.like(f"%{detail_suffix}"))
    latest = latest.group_by(audit.AuditEvent.request_id)
    rows = db.session.execute(
        sa.select(audit.AuditEvent.request_id, audit.AuditEvent.at, audit.AuditEvent.actor, User.name)
        .outerjoin(User, User.id == audit.AuditEvent.user_id)
        .where(audit.AuditEvent.id.in_(latest))
    )
    return {rid: Done(by=name or actor or "someone", at=as_local(at)) for rid, at, actor, name in rows
            if rid is not None}


def _row(req: Request, collected: Done | None) -> ChartRow:
    return ChartRow(
        request_id=req.id,
        call_ref=req.call_ref,
        patient_name=req.patient_display_name,
        s_number=req.s_number,
        cd_count=req.cd_count or 0,
        contact_name=req.contact_name,
        submitted_on=as_local(req.created_at).date(),
        site=req.drop_off_site,
        status=req.status.value,
        collected=collected,
    )


def chart(sites: list[str], day: date) -> list[ChartSection]:
    """One section per site: the CD imports to collect there on `day`, oldest first.

    A CD import is on the chart when it waits for drop-off or collection (submitted by the
    end of `day`), or when it was collected on `day` (a chart printed after the round
    shows who collected it)."""
    start, end = day_bounds(day)
    collected_that_day = (
        sa.select(audit.AuditEvent.request_id)
        .where(audit.AuditEvent.action == audit.Action.CD_COLLECTED.value,
               audit.AuditEvent.at >= start, audit.AuditEvent.at < end)
    )
    requests = list(db.session.scalars(
        sa.select(Request)
        .where(
            Request.kind == Kind.CD,
            Request.drop_off_site.in_(sites),
            sa.or_(
                sa.and_(Request.status == Status.AWAITING_DROP_OFF, Request.created_at < end),
                Request.id.in_(collected_that_day),
            ),
        )
        .order_by(Request.created_at, Request.id)
    ))
    collected = last_done([r.id for r in requests if r.status != Status.AWAITING_DROP_OFF],
                          audit.Action.CD_COLLECTED)
    return [
        ChartSection(site=site, site_name=DROP_OFF_SITES[site],
                     rows=tuple(_row(r, collected.get(r.id)) for r in requests if r.drop_off_site == site))
        for site in sites
    ]


def collected_between(start: datetime, end: datetime) -> list[ChartRow]:
    """The CDs collected between two moments, newest first (the collection page's list)."""
    events = db.session.execute(
        sa.select(audit.AuditEvent.request_id, sa.func.max(audit.AuditEvent.id))
        .where(audit.AuditEvent.action == audit.Action.CD_COLLECTED.value,
               audit.AuditEvent.at >= start, audit.AuditEvent.at < end)
        .group_by(audit.AuditEvent.request_id)
    ).all()
    ids = [rid for rid, _ in events if rid is not None]
    if not ids:
        return []
    done = last_done(ids, audit.Action.CD_COLLECTED)
    requests = db.session.scalars(sa.select(Request).where(Request.id.in_(ids)))
    rows = [_row(r, done.get(r.id)) for r in requests]
    return sorted(rows, key=lambda row: row.collected.at if row.collected else start, reverse=True)
