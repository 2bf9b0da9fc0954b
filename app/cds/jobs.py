"""CD jobs on RQ: scan an uploaded CD (never in a web request), re-queue a scan whose job
was lost, purge CD contents 15 days after delivery.

Jobs take ids and are idempotent: the upload row says what is done. A scan is one pass
over files already on disk, so a lost scan (worker killed, Redis restarted) is simply run
again from the start by `requeue_scans`; nothing it writes is half-visible, since the
result replaces `scan_json` in one commit.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from app import audit
from app.cds import storage
from app.cds.models import CdUpload, CdUploadState
from app.cds.scan import Limits, Problem, ScanResult, printable, scan_files, unpack_zip
from app.extensions import db, redis_conn
from app.logs import log_exception
from app.queues import INBOUND, job_context, queue
from app.requests.statuses import Kind, Status
from app.timeutil import aware, utcnow
from app.transfers.models import Transfer, TransferState
from app.workflow.machine import advance

log = logging.getLogger("iep.cds")

CD_KEEP = timedelta(days=15)  # like the gateway's copies (Appendix 1 "Purged")
SCAN_BEAT = 1.0  # seconds between progress writes while scanning
SCAN_LOST_AFTER = timedelta(minutes=3)  # a scan whose progress has not moved for this long is re-queued


def scan_job_id(upload_id: int) -> str:
    return f"cd-scan-{int(upload_id)}"


def queue_scan(upload: CdUpload) -> bool:
    """Queue the scan of a complete upload (the caller has committed SCANNING). False if
    Redis refused; `requeue_scans` queues it again when the queue is back."""
    try:
        queue(INBOUND).enqueue(scan_upload, upload.id, job_id=scan_job_id(upload.id),
                               job_timeout=3600, result_ttl=600, failure_ttl=86400)
    except RedisError as exc:
        log.warning("CD upload %s scan not queued (%s); it will be retried", upload.id, type(exc).__name__)
        return False
    return True


def cd_files(upload: CdUpload) -> tuple[dict[str, Path], list[Problem]]:
    """{name on the CD: stored path} of the files the desk took; a .zip is unpacked (safely,
    under opaque names) and its entries take its place, named `archive.zip/entry`. With
    them, the problems met on the way: files refused at upload, unsafe zip entries."""

    files: dict[str, Path] = {}
    zips: list[tuple[str, Path]] = []
    for row in upload.files:
        if row.refused:
            continue
        path = storage.file_path(upload.id, row.id)
        if row.relpath.lower().endswith(".zip"):
            zips.append((row.relpath, path))
        else:
            files[row.relpath] = path
    problems = [Problem(name=printable(row.relpath), reason=row.refused) for row in upload.files if row.refused]
    for index, (name, path) in enumerate(zips):
        dest = storage.unpacked_dir(upload.id) / str(index)
        entries, found = unpack_zip(path, dest, Limits())
        for entry, stored in entries.items():
            files[f"{name}/{entry}"] = stored
        # A refusal of the whole archive names the stored file: name the uploaded one.
        problems += [Problem(name=printable(name) if p.name == path.name else f"{printable(name)}/{p.name}",
                             reason=p.reason) for p in found]
    return files, problems


def scan_upload(upload_id: int) -> str:
    """Scan upload `upload_id` with pydicom (issue 12.2 and 12.3): progress is written as it
    goes, the result replaces scan_json at the end, and the request says Uploaded."""

    with job_context():
        upload = db.session.get(CdUpload, upload_id)
        if upload is None or upload.state != CdUploadState.SCANNING:
            return "nothing to scan"
        req = upload.request
        if req.kind == Kind.CD and advance(req, Status.UPLOADED, actor_id=None, actor=audit.SYSTEM_CD_SCAN,
                                           note=f"The CD's {upload.files_expected} files were uploaded."):
            db.session.commit()
        try:
            files, problems = cd_files(upload)
            upload.scan_total, upload.scan_done, upload.updated_at = len(files), 0, utcnow()
            db.session.commit()
            last = [time.monotonic()]
            found_so_far = [""]

            def snapshot(so_far: ScanResult) -> None:
                so_far.problems[:0] = problems
                found_so_far[0] = so_far.to_json()

            def beat(done: int, total: int) -> None:
                # Progress (and what was found so far) for the page, once a second.
                if time.monotonic() - last[0] < SCAN_BEAT and done != total:
                    return
                last[0] = time.monotonic()
                values: dict[str, object] = {"scan_done": done, "scan_total": total, "updated_at": utcnow()}
                if found_so_far[0]:
                    values["scan_json"] = found_so_far[0]
                db.session.execute(sa.update(CdUpload).where(CdUpload.id == upload_id, CdUpload.state ==
                                                              CdUploadState.SCANNING).values(**values))
                db.session.commit()

            result = scan_files(files, Limits(), progress=beat, partial=snapshot)
            result.problems[:0] = problems
        except Exception:  # noqa: BLE001 - the reason is shown to the desk; the job itself succeeds
            db.session.rollback()
            log_exception(log, "CD upload %s scan failed", upload_id)
            upload = db.session.get(CdUpload, upload_id)
            if upload is not None:
                upload.state = CdUploadState.FAILED
                upload.error = "The scan stopped on an unexpected error; ask the desk to scan it again."
                db.session.commit()
            return "failed"
        upload = db.session.get(CdUpload, upload_id)
        if upload is None or upload.state != CdUploadState.SCANNING:
            return "replaced while scanning"
        upload.scan_json = result.to_json()
        upload.scan_done = upload.scan_total = result.files_seen
        upload.state = CdUploadState.SCANNED
        upload.scanned_at = upload.updated_at = utcnow()
        studies = sum(len(p.studies) for p in result.patients)
        instances = sum(s.instances for p in result.patients for s in p.studies)
        # Counts only: the audit detail and the log never hold a patient value.
        audit.record(audit.Action.CD_SCAN, request_id=upload.request_id, user_id=None, actor=audit.SYSTEM_CD_SCAN,
                     detail=f"{upload.request.call_ref} CD upload {upload.id} scanned: {len(result.patients)} "
                            f"patient(s), {studies} study(ies), {instances} instance(s), "
                            f"{len(result.problems)} problem(s)")
        db.session.commit()
        log.info("CD upload %s scanned: %s files, %s problems", upload_id, result.files_seen, len(result.problems))
        return "scanned"


def _job_waiting(upload_id: int) -> bool:
    try:
        job = Job.fetch(scan_job_id(upload_id), connection=redis_conn())
    except NoSuchJobError:
        return False
    return job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


def requeue_scans() -> int:
    """Maintenance job: queue again a scan whose job is lost (never queued because Redis was
    down, Redis restarted, the worker killed mid-scan): SCANNING with no job waiting and no
    progress for SCAN_LOST_AFTER (a running scan writes progress every second)."""
    queued = 0
    with job_context():
        stale = utcnow() - SCAN_LOST_AFTER
        for upload in db.session.scalars(sa.select(CdUpload).where(CdUpload.state == CdUploadState.SCANNING)):
            fresh = upload.scan_total == 0 and upload.completed_at is not None and aware(upload.completed_at) > stale
            if aware(upload.updated_at) > stale or fresh:
                continue
            try:
                if _job_waiting(upload.id):
                    continue
            except RedisError:
                return queued
            upload.updated_at = utcnow()  # one re-queue per quiet period
            db.session.commit()
            queued += queue_scan(upload)
    return queued


def settle_sent() -> int:
    """Maintenance job: an upload whose transfer delivered is Sent; one whose transfer was
    cancelled goes back to Scanned (the desk may choose again). Idempotent."""
    moved = 0
    with job_context():
        rows = db.session.execute(sa.select(CdUpload, Transfer).join(Transfer, CdUpload.transfer_id == Transfer.id)
                                  .where(CdUpload.state == CdUploadState.SENDING)).all()
        for upload, transfer in rows:
            if transfer.state == TransferState.DELIVERED:
                upload.state = CdUploadState.SENT
            elif transfer.state == TransferState.CANCELLED:
                upload.state = CdUploadState.SCANNED
            else:
                continue
            upload.updated_at = utcnow()
            moved += 1
        db.session.commit()
    return moved


def purge_cds() -> int:
    """Maintenance job: a CD's uploaded contents go 15 days after its studies reached PACS
    (like the gateway's copies), and 15 days after a cancelled request or an abandoned
    upload; the rows stay, saying when and why."""
    cutoff = utcnow() - CD_KEEP
    purged = 0
    with job_context():
        delivered = sa.select(Transfer.id).where(Transfer.state == TransferState.DELIVERED,
                                                  Transfer.finished_at < cutoff)
        rows = db.session.scalars(sa.select(CdUpload).where(
            CdUpload.purged_at.is_(None),
            sa.or_(CdUpload.transfer_id.in_(delivered),
                   sa.and_(CdUpload.state != CdUploadState.SENDING, CdUpload.transfer_id.is_(None),
                           CdUpload.updated_at < cutoff)),
        )).all()
        for upload in rows:
            if upload.transfer_id is None and upload.request.status not in (Status.CANCELLED, Status.COMPLETED,
                                                                             Status.DELIVERED, Status.DECLINED):
                continue  # a CD still being worked keeps its contents
            reason = ("delivered to PACS 15 days ago" if upload.transfer_id is not None
                      else f"not sent, and the request is {upload.request.status.value}")
            storage.remove(upload.id)
            upload.state = CdUploadState.PURGED
            upload.purged_at = utcnow()
            upload.purge_reason = reason
            audit.record(audit.Action.PURGE, request_id=upload.request_id, user_id=None, actor=audit.SYSTEM_PURGE,
                         detail=f"{upload.request.call_ref} CD upload {upload.id} contents purged: {reason}")
            db.session.commit()
            purged += 1
    return purged
