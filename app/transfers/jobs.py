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
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app import audit
from app.dicom.errors import DicomFailure
from app.extensions import db, redis_conn
from app.timeutil import aware, utcnow
from app.transfers import engine, service
from app.transfers.models import InboundStudy, Transfer, TransferState
from app.workflow.jobs import job_context
from app.workflow.machine import advance
from app.workflow.statuses import Status

log = logging.getLogger("iep.transfers")

ACTIVE = (TransferState.QUEUED.value, TransferState.RUNNING.value, TransferState.VERIFYING.value)
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
            Transfer.state.in_(ACTIVE),
            sa.or_(Transfer.lease_until.is_(None), Transfer.lease_until < now),
        )
        .values(lease_token=token, lease_until=now + _lease_length())
    )
    db.session.commit()
    return result.rowcount == 1


def _release(transfer_id: int, token: str) -> None:
    db.session.rollback()
    db.session.execute(
        sa.update(Transfer).where(Transfer.id == transfer_id, Transfer.lease_token == token)
        .values(lease_token="", lease_until=None)
    )
    db.session.commit()


def run_transfer(transfer_id: int) -> str:
    """Job body: run (or resume) one transfer. Idempotent; returns its state."""
    with job_context():
        token = uuid.uuid4().hex
        if not _take_lease(transfer_id, token):
            return "not runnable now (finished, cancelled, or another run holds it)"
        try:
            return _run(transfer_id, token)
        finally:
            _release(transfer_id, token)


def _run(transfer_id: int, token: str) -> str:
    transfer = db.session.get(Transfer, transfer_id)
    if transfer.cancel_requested:
        return _finish_cancelled(transfer)
    transfer.state = TransferState.RUNNING.value
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
        return _finish_cancelled(db.session.get(Transfer, transfer_id))
    except engine.Stop as stop:
        db.session.rollback()
        transfer = db.session.get(Transfer, transfer_id)
        transfer.state = TransferState.WAITING_CONFIRMATION.value
        transfer.last_error = str(stop)
        transfer.phase = "Waiting for the analyst"
        db.session.commit()
        return transfer.state
    except engine.PartialFailure as partial:
        db.session.rollback()
        return _fail(db.session.get(Transfer, transfer_id), str(partial))
    except DicomFailure as failure:
        db.session.rollback()
        transfer = db.session.get(Transfer, transfer_id)
        if failure.retryable and transfer.attempts < transfer.max_attempts:
            wait = service.backoff(transfer.attempts)
            transfer.state = TransferState.QUEUED.value
            transfer.not_before = utcnow() + wait
            transfer.last_error = (
                f"{failure.plain}. Trying again in {int(wait.total_seconds())} s "
                f"(attempt {transfer.attempts} of {transfer.max_attempts})."
            )
            transfer.phase = "Waiting to retry"
            db.session.commit()
            _release(transfer.id, token)
            service.enqueue(transfer)
            return transfer.state
        return _fail(transfer, failure.plain + ("" if not failure.retryable else
                                                f" (gave up after {transfer.attempts} attempts)"))
    except Exception as exc:
        # A bug, not the network: fail visibly (no endless re-runs), and let RQ record it.
        db.session.rollback()
        log.exception("%s: transfer %s hit an unexpected error", ref, transfer_id)
        _fail(db.session.get(Transfer, transfer_id),
              f"The desk hit an unexpected error ({type(exc).__name__}); it is logged. Retry, or call IM&T.")
        raise
    return db.session.get(Transfer, transfer_id).state


def _fail(transfer: Transfer, reason: str) -> str:
    transfer.state = TransferState.FAILED.value
    transfer.last_error = reason
    transfer.finished_at = utcnow()
    transfer.phase = "Failed"
    req = transfer.request
    advance(req, Status.FAILED, actor_id=None, note=f"Transfer failed: {reason}")
    db.session.commit()
    return transfer.state


def _finish_cancelled(transfer: Transfer) -> str:
    transfer.state = TransferState.CANCELLED.value
    transfer.finished_at = utcnow()
    transfer.phase = "Cancelled"
    db.session.commit()
    return transfer.state


def _job_alive(job_id: str) -> bool:
    """Is RQ still going to run (or running) this job?"""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=redis_conn())
    except NoSuchJobError:
        return False
    return job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def reconcile() -> int:
    """Maintenance job: re-queue every active transfer that nothing will run.

    A transfer is lost when its job is gone (Redis restarted empty, job evicted), or its
    run died (a killed worker: the lease ran out while the job still looks started).
    A running transfer with no progress for the stall time is also flagged for the desk.
    Idempotent: a transfer whose job waits in a queue, or whose lease is alive, is left.
    """
    now = utcnow()
    requeued = 0
    with job_context():
        for transfer in db.session.scalars(sa.select(Transfer).where(Transfer.state.in_(ACTIVE))):
            if transfer.lease_until is not None and aware(transfer.lease_until) > now:
                continue  # a live run holds it
            try:
                if _job_alive(transfer.job_id):
                    continue
            except RedisError:
                return requeued  # Redis is down: nothing can be queued now; next pass
            if transfer.state != TransferState.QUEUED.value:
                transfer.stalled = True
                transfer.phase = "Stalled: re-queued by the watchdog"
            transfer.job_id = ""
            transfer.state = TransferState.QUEUED.value
            db.session.commit()
            if _requeue(transfer):
                requeued += 1
    return requeued


def _requeue(transfer: Transfer) -> bool:
    from rq import Queue

    from app.transfers.lanes import queue_name

    job_id = f"transfer-{transfer.id}-r{uuid.uuid4().hex[:8]}"
    try:
        Queue(queue_name(transfer.direction, transfer.priority), connection=redis_conn()).enqueue(
            run_transfer, transfer.id, job_id=job_id, job_timeout=service.JOB_TIMEOUT
        )
    except RedisError:
        return False
    transfer.job_id = job_id
    db.session.commit()
    log.info("transfer %s re-queued as %s", transfer.id, job_id)
    return True


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
            audit.record(audit.Action.PURGE, request_id=req.id if req else None, user_id=None, actor="desk",
                         detail=f"gateway copy of a study purged ({'delivered' if study.delivered_at else study.purge_reason[:200]})")
            if study.delivered_at is None:
                advance(req, Status.PURGED, actor_id=None, note="Gateway copies removed after 15 days.")
            db.session.commit()
            purged += 1
    return purged


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
            # One download per request at a time: a later study waits for the analyst.
            taken = db.session.scalar(sa.select(Transfer.id).where(
                Transfer.request_id == study.request_id, Transfer.direction == Direction.INBOUND.value,
                Transfer.state != TransferState.CANCELLED.value))
            if taken:
                continue
            transfer = service.create_transfer(request=study.request, direction=Direction.INBOUND,
                                               priority=study.request.priority.value, source=None, dest=pacs,
                                               study_uids=[study.study_uid], user_id=None)
            service.add_inbound_items(transfer, [study])
            db.session.commit()
            service.enqueue(transfer)
            queued += 1
    return queued
