"""Scheduled rules of the workflow.

Jobs run on the `maintenance` queue (DESIGN "Transfers"), enqueued by the pool's cron
process (`app/schedule.py`) or by the web side. Each job body takes ids (or
nothing), opens its own app context with `job_context()` (`app/queues.py`), and is
idempotent: running it twice, or after a crash half-way, leaves the same state as running
it once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import sqlalchemy as sa

from app import audit
from app.extensions import db
from app.logs import log_exception
from app.queues import job_context, job_label
from app.requests.models import Request
from app.requests.statuses import Status
from app.timeutil import utcnow

log = logging.getLogger("iep.jobs")

# Guideline 2.4 d: details not established within 2 weeks -> the request is cancelled.
AWAITING_DETAILS_LIMIT = timedelta(days=14)
AUTO_CANCEL_NOTE = (
    "Cancelled automatically: the details asked for were not received within 14 days "
    "(guideline 2.4 d)."
)

def stale_awaiting_details_ids(now: datetime | None = None) -> list[int]:
    """Ids of requests left in Awaiting Details for more than 14 days (pure query)."""
    cutoff = (now or utcnow()) - AWAITING_DETAILS_LIMIT
    return list(
        db.session.scalars(
            sa.select(Request.id)
            .where(Request.status == Status.AWAITING_DETAILS, Request.status_changed_at < cutoff)
            .order_by(Request.id)
        )
    )


def auto_cancel_stale() -> int:
    """Cancel requests left in Awaiting Details for 14 days (guideline 2.4 d). Job body.

    Idempotent: a request is re-read and re-checked in its own transaction before it is
    cancelled, so a second run (or a run racing an analyst who just acted) changes
    nothing. One request failing is logged and does not stop the others; the next run
    (every 15 minutes) tries it again. Returns how many requests it cancelled.
    """
    from app.workflow import machine

    cancelled = 0
    with job_context():
        now = utcnow()
        cutoff = now - AWAITING_DETAILS_LIMIT
        for request_id in stale_awaiting_details_ids(now):
            call_ref = ""
            try:
                req = db.session.scalar(
                    sa.select(Request)
                    .where(
                        Request.id == request_id,
                        Request.status == Status.AWAITING_DETAILS,
                        Request.status_changed_at < cutoff,
                    )
                    .with_for_update()
                )
                if req is None:  # moved on since the list was read
                    db.session.rollback()
                    continue
                call_ref = req.call_ref
                machine.transition(req, Status.CANCELLED, actor_id=None, actor=audit.SYSTEM_AUTO_CANCEL,
                                   note=AUTO_CANCEL_NOTE)
                db.session.commit()
                cancelled += 1
                log.info("%s auto-cancel: %s cancelled after 14 days in Awaiting Details", job_label(), call_ref)
            except Exception:
                db.session.rollback()
                log_exception(log, "%s auto-cancel: request %s (%s) could not be cancelled", job_label(),
                              request_id, call_ref or "-")
    return cancelled
