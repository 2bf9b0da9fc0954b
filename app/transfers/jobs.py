"""Transfer jobs on RQ: run one transfer, reconcile lost ones, purge the gateway.

Jobs take ids, never objects, and are idempotent: the transfer row (and its instance
rows) say what is done, so running a job twice, or after a crash, resumes the work.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app import audit
from app.dicom.errors import DicomFailure
from app.extensions import db, redis_conn, rowcount
from app.logs import log_exception
from app.queues import job_context
from app.requests.models import Request
from app.requests.statuses import Priority, Status
from app.timeutil import aware, utcnow
from app.transfers import engine, service
from app.transfers.models import ACTIVE_STATES, InboundStudy, Transfer, TransferState
from app.workflow.machine import advance

log = logging.getLogger("iep.transfers")

GATEWAY_KEEP = timedelta(days=15)  # Appendix 1 "Purged": not available after 15 days


def _lease_length() -> timedelta:
    return timedelta(seconds=service.settings().transfer_stall_seconds)


def _take_lease(transfer_id: int, token: str) -> bool:
    """Claim the transfer for this run (atomic): no other live run holds it."""
    now = utcnow()
    result = db.session.execute(
        sa.update(Transfer)
        .where(
            Transfer.id == transfer_id,
            Transfer.state.in_(ACTIVE_STATES),
            sa.or_(Transfer.lease_until.is_(None), Transfer.lease_until < now),
            # A job that comes early (a duplicate, or one queued by an older desk) never
            # runs a transfer before its retry time.
            sa.or_(Transfer.not_before.is_(None), Transfer.not_before <= now),
        )
        .values(lease_token=token, lease_until=now + _lease_length()),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()
    return rowcount(result) == 1


def _release(transfer_id: int, token: str) -> None:
    db.session.rollback()
    db.session.execute(
        sa.update(Transfer).where(Transfer.id == transfer_id, Transfer.lease_token == token)
        .values(lease_token="", lease_until=None),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()


def run_transfer(transfer_id: int) -> str:
    """Job body: run (or resume) one transfer. Idempotent; returns its state (a plain string:
    RQ pickles the result, and a reader of it need not import the models)."""
    with job_context():
        transfer = db.session.get(Transfer, transfer_id)
        if transfer is None:
            return "no such transfer"
        if transfer.state == TransferState.QUEUED and not service.is_due(transfer):
            _forget_job(transfer_id)
            return "not due yet: the dispatcher queues it when it is"
        token = uuid.uuid4().hex
        if not _take_lease(transfer_id, token):
            return "not runnable now (finished, cancelled, or another run holds it)"
        try:
            return _run(transfer_id, token)
        finally:
            _release(transfer_id, token)


def _run(transfer_id: int, token: str) -> str:
    # get_one: we hold the lease on this row, and transfers are never deleted.
    transfer = db.session.get_one(Transfer, transfer_id)
    if transfer.cancel_requested:
        return _finish_cancelled(transfer)
    transfer.state = TransferState.RUNNING
    transfer.attempts += 1
    transfer.started_at = transfer.started_at or utcnow()
    transfer.progressed_at = utcnow()
    transfer.not_before = None
    db.session.commit()
    ref = transfer.request.call_ref if transfer.request else f"transfer {transfer.id}"
    log.info("%s: transfer %s attempt %s (%s)", ref, transfer.id, transfer.attempts, transfer.direction)
    progress = engine.Progress(transfer, token, _lease_length())
    try:
        engine.RUNNERS[transfer.direction](transfer, progress)
    except engine.LeaseLost:
        log.warning("%s: transfer %s taken over by another run", ref, transfer.id)
        return "taken over"
    except engine.Cancelled:
        db.session.rollback()
        return _finish_cancelled(db.session.get_one(Transfer, transfer_id))
    except engine.Stop as stop:
        db.session.rollback()
        transfer = db.session.get_one(Transfer, transfer_id)
        transfer.state = TransferState.WAITING_CONFIRMATION
        transfer.last_error = str(stop)
        transfer.phase = "Waiting for the analyst"
        db.session.commit()
        return transfer.state.value
    except engine.PartialFailure as partial:
        db.session.rollback()
        return _fail(db.session.get_one(Transfer, transfer_id), str(partial))
    except DicomFailure as failure:
        db.session.rollback()
        transfer = db.session.get_one(Transfer, transfer_id)
        if failure.retryable and transfer.attempts < transfer.max_attempts:
            wait = service.backoff(transfer.attempts)
            transfer.state = TransferState.QUEUED
            transfer.not_before = utcnow() + wait
            transfer.last_error = (
                f"{failure.plain}. Trying again in {int(wait.total_seconds())} s "
                f"(attempt {transfer.attempts} of {transfer.max_attempts})."
            )
            transfer.phase = "Waiting to retry"
            transfer.job_id = ""  # this job is done with it: the dispatcher queues the retry when due
            db.session.commit()
            _release(transfer.id, token)
            service.enqueue(transfer, seen_job_id="")
            return transfer.state.value
        return _fail(transfer, failure.plain + ("" if not failure.retryable else
                                                f" (gave up after {transfer.attempts} attempts)"))
    except Exception as exc:
        # A bug, not the network: fail visibly (no endless re-runs), and let RQ record it.
        db.session.rollback()
        log_exception(log, "%s: transfer %s hit an unexpected error", ref, transfer_id)
        _fail(db.session.get_one(Transfer, transfer_id),
              f"The desk hit an unexpected error ({type(exc).__name__}); it is logged. Retry, or call IM&T.")
        raise
    return db.session.get_one(Transfer, transfer_id).state.value


def _fail(transfer: Transfer, reason: str) -> str:
    _tell_the_desk(transfer, reason)
    transfer.state = TransferState.FAILED
    transfer.stalled = False  # the failure is what the desk sees now, not an old stall
    transfer.last_error = reason
    transfer.finished_at = utcnow()
    transfer.phase = "Failed"
    req = transfer.request
    advance(req, Status.FAILED, actor_id=None, actor=audit.SYSTEM_TRANSFER_ENGINE, note=f"Transfer failed: {reason}")
    db.session.commit()
    return transfer.state.value


def _tell_the_desk(transfer: Transfer, reason: str) -> None:
    """E-mail the service desk that a transfer failed, naming each instance that did not
    make it (issue 8.7); in the caller's transaction. No patient details: the call
    reference and the instances' series and UIDs are enough to act on."""
    from app.workflow import mail

    to = service.settings().desk_email
    if not to or not mail.valid_address(to):
        return
    items = service.problem_items(transfer, limit=500)
    ref = transfer.request.call_ref if transfer.request else f"transfer {transfer.id}"
    mail.queue_email(
        to, f"{ref}: transfer {transfer.id} failed", "transfer_failed_desk", request=transfer.request,
        dedup_key=f"transfer-failed:{transfer.id}:{transfer.attempts}:{utcnow():%Y%m%d%H%M%S}",
        call_ref=ref, transfer=transfer, reason=reason, items=items, more=service.problem_count(transfer) - len(items),
    )


def _finish_cancelled(transfer: Transfer) -> str:
    transfer.state = TransferState.CANCELLED
    transfer.stalled = False
    transfer.finished_at = utcnow()
    transfer.phase = "Cancelled"
    db.session.commit()
    return transfer.state.value


def _forget_job(transfer_id: int) -> None:
    """This job will not run the transfer: clear its id from the row (only if it is still
    ours), so the dispatcher queues a new one when the transfer is due."""
    job = get_current_job()
    if job is None:
        return
    db.session.execute(
        sa.update(Transfer).where(Transfer.id == transfer_id, Transfer.job_id == job.id).values(job_id=""),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()


def _job_pending(transfer: Transfer) -> bool:
    """Will the transfer's job run it? Yes while it waits in a queue, or has just started
    and not yet taken the lease. A started job whose lease ran out is dead (a killed
    worker), and so is a scheduled or deferred one: the database is the scheduler, and
    RQ would only promote it from a worker listening to its queue."""
    if not transfer.job_id:
        return False
    try:
        job = Job.fetch(transfer.job_id, connection=redis_conn())
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=True)
    return status == JobStatus.QUEUED or (status == JobStatus.STARTED and transfer.lease_until is None)


def dispatch_due(limit: int = 200) -> int:
    """The scheduler: queue every transfer that is due and has no job (issue 8.1).

    Run every second by the pool's dispatcher process (`worker.py`). Covers a retry whose
    wait is over, a Batch transfer when the window opens, and anything that could not be
    queued while Redis was down. Blue Light first. Idempotent: `service.enqueue` claims
    the row, so two dispatchers queue a transfer once.
    """
    with job_context():
        return _dispatch_due(limit)


def _dispatch_due(limit: int) -> int:
    now = utcnow()
    due = db.session.scalars(
        sa.select(Transfer)
        .where(
            Transfer.state == TransferState.QUEUED,
            Transfer.job_id == "",
            Transfer.cancel_requested.is_(False),
            sa.or_(Transfer.not_before.is_(None), Transfer.not_before <= now),
        )
        .order_by(sa.case((Transfer.priority == Priority.BLUE_LIGHT, 0), else_=1), Transfer.id)
        .limit(limit)
    ).all()
    queued = 0
    for transfer in due:
        # Each enqueue commits, reloading the rows still to come: one the web queued since
        # must not be claimed again over its new job (it was selected with none).
        if service.enqueue(transfer, seen_job_id=""):
            queued += 1
    return queued


def reconcile() -> int:
    """The watchdog: re-queue every active transfer that nothing will run.

    A transfer is lost when its job is gone (Redis restarted empty, job evicted), waits
    in RQ's scheduler past its due time, or its run died (a killed worker: the lease ran
    out while the job still looks started). A running transfer whose run died is also
    flagged "stalled" for the desk. Re-queueing goes through `service.enqueue`, the one
    path that knows the lanes, Blue Light's front of queue, the Batch window and
    `not_before`. Idempotent: a transfer whose job waits in a queue, or whose lease is
    alive, is left; clearing a dead job id is a compare-and-set, so a second reconciler
    (or the dispatcher) racing this one queues the transfer once.
    """
    now = utcnow()
    requeued = 0
    with job_context():
        for transfer in db.session.scalars(sa.select(Transfer).where(Transfer.state.in_(ACTIVE_STATES))).all():
            if transfer.lease_until is not None and aware(transfer.lease_until) > now:
                continue  # a live run holds it
            try:
                if _job_pending(transfer):
                    continue
            except RedisError:
                return requeued  # Redis is down: nothing can be queued now; next pass
            if transfer.state == TransferState.QUEUED and not transfer.job_id:
                if service.enqueue(transfer, seen_job_id=""):  # the dispatcher's work, should it not run
                    requeued += 1
                continue
            values: dict[str, object] = {"job_id": "", "state": TransferState.QUEUED}
            if transfer.state != TransferState.QUEUED:
                values |= {"stalled": True, "phase": "Stalled: re-queued by the watchdog"}
            cleared = rowcount(db.session.execute(
                sa.update(Transfer)
                .where(Transfer.id == transfer.id, Transfer.job_id == transfer.job_id,
                       Transfer.state.in_(ACTIVE_STATES),
                       sa.or_(Transfer.lease_until.is_(None), Transfer.lease_until < now))
                .values(**values),
                execution_options={"synchronize_session": False},
            ))
            db.session.commit()
            if not cleared:
                continue
            db.session.refresh(transfer)
            if service.enqueue(transfer, seen_job_id=""):  # the id this pass cleared
                requeued += 1
                log.info("transfer %s re-queued as %s", transfer.id, transfer.job_id)
    return requeued


def purge_gateway() -> int:
    """Maintenance job: delete gateway copies 15 days after arrival, once delivered.

    A copy never delivered is kept (and flagged) unless an analyst gave a reason to purge
    it (`purge_reason`, audited). A request whose images were never delivered becomes
    Purged (Appendix 1 "Statuses").
    """
    cutoff = utcnow() - GATEWAY_KEEP
    purged = 0
    with job_context():
        rows = db.session.scalars(
            sa.select(InboundStudy).where(InboundStudy.purged_at.is_(None), InboundStudy.received_at < cutoff)
        )
        for study in rows:
            if study.delivered_at is None and not study.purge_reason:
                continue
            shutil.rmtree(Path(study.folder), ignore_errors=True)
            study.purged_at = utcnow()
            req = study.request
            audit.record(audit.Action.PURGE, request_id=req.id if req else None, user_id=None, actor=audit.SYSTEM_PURGE,
                         detail="gateway copy of a study purged "
                                f"({'delivered' if study.delivered_at else study.purge_reason[:200]})")
            if study.delivered_at is None:
                advance(req, Status.PURGED, actor_id=None, actor=audit.SYSTEM_PURGE,
                        note="Gateway copies removed after 15 days.")
            db.session.commit()
            purged += 1
    return purged


def settle_arrivals() -> int:
    """Maintenance job: a pushed study whose sender finished, and which has been quiet for
    ARRIVAL_QUIET_SECONDS since, is complete: its request says On IEP. Idempotent."""
    from app.transfers.inbound import settle

    moved = 0
    with job_context():
        waiting = db.session.scalars(sa.select(InboundStudy).join(Request, InboundStudy.request_id == Request.id).where(
            InboundStudy.purged_at.is_(None), InboundStudy.delivered_at.is_(None),
            InboundStudy.sender_done_at.is_not(None), Request.status != Status.ON_IEP)).all()
        for study in waiting:
            moved += settle(study, actor=audit.SYSTEM_GATEWAY)
    return moved


def auto_download() -> int:
    """Maintenance job (AUTO_DOWNLOAD=1): queue "Download to PACS" for matched studies
    that stopped arriving a minute ago and have no transfer yet. Idempotent."""
    from app.transfers.models import Direction

    if not service.settings().auto_download:
        return 0
    quiet = utcnow() - timedelta(minutes=1)
    queued = 0
    with job_context():
        pacs = service.local_pacs()
        if pacs is None:
            return 0
        waiting = db.session.scalars(sa.select(InboundStudy).where(
            InboundStudy.request_id.is_not(None), InboundStudy.delivered_at.is_(None),
            InboundStudy.purged_at.is_(None), InboundStudy.last_received_at < quiet))
        for study in waiting:
            if not service.arrival_state(study)[0]:
                continue  # still arriving, or the sender broke off: never sent incomplete (issue 8.3)
            # One download per request at a time: a later study waits for the analyst.
            taken = db.session.scalar(sa.select(Transfer.id).where(
                Transfer.request_id == study.request_id, Transfer.direction == Direction.INBOUND,
                Transfer.state != TransferState.CANCELLED))
            if taken:
                continue
            req = study.request
            if req is None:
                continue  # never: the query asks for a request_id, and the key holds
            try:
                transfer = service.create_transfer(request=req, direction=Direction.INBOUND,
                                                   priority=req.priority, source=None, dest=pacs,
                                                   study_uids=[study.study_uid], user_id=None,
                                                   actor=audit.SYSTEM_AUTO_DOWNLOAD)
                service.add_inbound_items(transfer, [study])
                db.session.commit()
            except (service.TransferUnderWay, IntegrityError, StaleDataError):
                db.session.rollback()  # an analyst pressed Download to PACS meanwhile: theirs runs
                continue
            service.enqueue(transfer, seen_job_id="")  # made just now, with no job
            queued += 1
    return queued
