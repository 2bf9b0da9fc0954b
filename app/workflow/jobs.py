"""Scheduled rules and the app context every job runs in.

Jobs run on the `maintenance` queue (DESIGN "Transfers"), enqueued by the pool's cron
process (`app/schedule.py`) or by the web side. Each job body takes ids (or
nothing), opens its own app context with `job_context()`, and is idempotent: running it
twice, or after a crash half-way, leaves the same state as running it once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import Flask, current_app, has_app_context

from app.extensions import db
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

_standalone: Flask | None = None
_engine_pid: dict[int, int] = {}


def _standalone_app() -> Flask:
    """The app for a job run outside `worker.py` (e.g. `rq worker`), made once per process."""
    global _standalone
    if _standalone is None:
        from app import create_app

        _standalone = create_app()
    return _standalone


def _fresh_pool_after_fork() -> None:
    # STYLE habit 4 / PITFALLS "RQ": a forked process must not reuse its parent's pooled
    # connections. dispose(close=False) drops the inherited pool without closing the
    # parent's sockets (SQLAlchemy "Using Connection Pools with Multiprocessing").
    engine = db.engine
    pid = os.getpid()
    seen = _engine_pid.setdefault(id(engine), pid)
    if seen != pid:
        engine.dispose(close=False)
        _engine_pid[id(engine)] = pid


def job_label() -> str:
    """`job <id>` of the RQ job running now, for log lines (STYLE habit 4)."""
    from rq import get_current_job

    job = get_current_job()
    return f"job {job.id}" if job is not None else "job -"


@contextmanager
def job_context() -> Iterator[Flask]:
    """An app context of the job's own: a database session of its own, removed at the end.

    Inside `worker.py` (or a test) the current app is reused; elsewhere one is created.
    A fresh context is pushed even when one exists, so a job never shares the session of
    whoever runs it (an in-process `SimpleWorker` in a test, say).
    """
    if has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # a LocalProxy typed as Flask
    else:
        app = _standalone_app()
    with app.app_context():
        _fresh_pool_after_fork()
        yield app


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
                machine.transition(req, Status.CANCELLED, actor_id=None, note=AUTO_CANCEL_NOTE)
                db.session.commit()
                cancelled += 1
                log.info("%s auto-cancel: %s cancelled after 14 days in Awaiting Details", job_label(), call_ref)
            except Exception:
                db.session.rollback()
                log.exception("%s auto-cancel: request %s (%s) could not be cancelled", job_label(), request_id,
                              call_ref or "-")
    return cancelled
