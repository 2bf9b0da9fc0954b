"""Starting, queueing, retrying and cancelling transfers (web side and jobs alike).

Enqueue -> job -> logic (STYLE habit 2): this module makes the rows and puts ids on RQ;
`jobs.run_transfer(transfer_id)` loads the row and runs `engine`; nothing here talks DICOM.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from redis.exceptions import RedisError
from rq import Queue

from app.dicom.ae import AEConfig, Node, Timeouts
from app.extensions import db, redis_conn
from app.intake.models import Request
from app.timeutil import aware, utcnow
from app.transfers.lanes import in_window, next_window_start, queue_name
from app.transfers.models import DicomNode, Direction, InboundStudy, Transfer, TransferItem, TransferState
from app.workflow.machine import advance, transition
from app.workflow.statuses import Priority, Status

log = logging.getLogger("iep.transfers")

# An outer bound on every transfer job (PITFALLS: a stalled peer can freeze a C-GET).
JOB_TIMEOUT = 6 * 3600


def settings():  # noqa: ANN201
    return current_app.config["IEP_SETTINGS"]


def ae_config() -> AEConfig:
    """How the desk presents itself: the gateway AE title, timeouts from settings."""
    seconds = float(settings().dicom_timeout_seconds)
    return AEConfig(
        ae_title=settings().gateway_ae_title,
        timeouts=Timeouts(connection=min(seconds, 10.0), acse=seconds, dimse=seconds * 2, network=seconds * 4),
    )


def as_node(node: DicomNode) -> Node:
    return Node(ae_title=node.ae_title, host=node.host, port=node.port)


def our_node() -> Node:
    return Node(ae_title=settings().gateway_ae_title, host="127.0.0.1", port=settings().gateway_port)


def gateway_store() -> Path:
    return settings().storage_root / "gateway" / "store"


def gateway_quarantine() -> Path:
    return settings().storage_root / "gateway" / "quarantine"


def staging_dir(transfer_id: int) -> Path:
    return settings().storage_root / "transfers" / str(transfer_id)


def local_pacs() -> DicomNode | None:
    name = settings().local_pacs_node
    return db.session.scalar(
        sa.select(DicomNode).where(sa.or_(DicomNode.name == name, DicomNode.ae_title == name), DicomNode.active)
    )


def create_transfer(
    *,
    request: Request | None,
    direction: Direction,
    priority: str,
    source: DicomNode | None,
    dest: DicomNode | None,
    study_uids: list[str],
    user_id: int | None,
    report_text: str = "",
    report_pdf_path: str = "",
) -> Transfer:
    """A queued transfer row (the caller commits, then calls `enqueue`)."""
    transfer = Transfer(
        request=request,
        direction=direction.value,
        priority=priority,
        source_node=source,
        dest_node=dest,
        study_uids=list(study_uids),
        max_attempts=settings().transfer_max_attempts,
        created_by_id=user_id,
        report_text=report_text,
        report_pdf_path=report_pdf_path,
        state=TransferState.QUEUED.value,
    )
    db.session.add(transfer)
    db.session.flush()
    if request is not None:
        if request.status == Status.NEW:
            transition(request, Status.ACCEPTED, actor_id=user_id)
        # A pull brings images to the gateway: the request goes straight to On IEP when
        # they arrive. Exports and downloads to PACS are queued downloads.
        if direction != Direction.PULL:
            advance(request, Status.DOWNLOAD_REQUEST, actor_id=user_id)
    return transfer


def add_inbound_items(transfer: Transfer, inbound: list[InboundStudy]) -> None:
    """List the gateway copies an import will send (one row per instance file)."""
    for study in inbound:
        for path in sorted(Path(study.folder).glob("*.dcm")):
            db.session.add(
                TransferItem(transfer_id=transfer.id, study_uid=study.study_uid, sop_uid=path.stem,
                             path=str(path), size=path.stat().st_size)
            )
    db.session.flush()
    totals = db.session.execute(
        sa.select(sa.func.count(TransferItem.id), sa.func.coalesce(sa.func.sum(TransferItem.size), 0)).where(
            TransferItem.transfer_id == transfer.id
        )
    ).one()
    transfer.instances_total, transfer.bytes_total = int(totals[0]), int(totals[1])


def enqueue(transfer: Transfer) -> str | None:
    """Put the transfer's id on its lane (idempotent per attempt); None if Redis is down —
    the reconciler enqueues it later. Batch transfers wait for the overnight window."""
    from app.transfers.jobs import run_transfer

    job_id = f"transfer-{transfer.id}-{transfer.attempts}"
    name = queue_name(transfer.direction, transfer.priority)
    try:
        queue = Queue(name, connection=redis_conn())
        if transfer.priority == Priority.BATCH.value and not in_window(utcnow(), settings().batch_window):
            when = next_window_start(utcnow(), settings().batch_window)
            queue.enqueue_at(when, run_transfer, transfer.id, job_id=job_id, job_timeout=JOB_TIMEOUT)
        elif transfer.not_before is not None and aware(transfer.not_before) > utcnow():
            queue.enqueue_at(transfer.not_before, run_transfer, transfer.id, job_id=job_id, job_timeout=JOB_TIMEOUT)
        else:
            queue.enqueue(run_transfer, transfer.id, job_id=job_id, job_timeout=JOB_TIMEOUT,
                          at_front=transfer.priority == Priority.BLUE_LIGHT.value)
    except RedisError as exc:
        log.warning("transfer %s not enqueued (%s); the reconciler will", transfer.id, type(exc).__name__)
        return None
    transfer.job_id = job_id
    db.session.commit()
    return job_id


def retry(transfer: Transfer, user_id: int | None) -> None:
    """Queue a failed transfer again: it resumes with what is not yet confirmed."""
    if transfer.state not in (TransferState.FAILED.value, TransferState.CANCELLED.value):
        raise ValueError("only a failed or cancelled transfer can be retried")
    transfer.state = TransferState.QUEUED.value
    transfer.attempts = 0
    transfer.last_error = ""
    transfer.cancel_requested = False
    transfer.stalled = False
    transfer.not_before = None
    if transfer.request is not None and transfer.request.status in (Status.FAILED, Status.PURGED):
        if transfer.request.status == Status.PURGED or transfer.direction == Direction.PULL.value:
            transition(transfer.request, Status.ACCEPTED, actor_id=user_id, note="Transfer retried.")
        else:
            advance(transfer.request, Status.DOWNLOAD_REQUEST, actor_id=user_id, note="Transfer retried.")
    db.session.commit()
    enqueue(transfer)


def cancel(transfer: Transfer) -> None:
    """Ask a transfer to stop between instances; a queued one stops at once."""
    transfer.cancel_requested = True
    if transfer.state == TransferState.QUEUED.value:
        transfer.state = TransferState.CANCELLED.value
        transfer.finished_at = utcnow()
    db.session.commit()


def backoff(attempt: int) -> timedelta:
    """Wait before retry `attempt` (1-based): 5 s, 20 s, 1 min, 2 min, 5 min, then 10 min."""
    steps = [5, 20, 60, 120, 300]
    return timedelta(seconds=steps[attempt - 1] if attempt <= len(steps) else 600)
