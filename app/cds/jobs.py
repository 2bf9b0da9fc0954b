"""CD jobs on RQ: scan an uploaded CD (never in a web request), purge old CD contents.

Jobs take ids and are idempotent: the upload row says what is done.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from app.cds.models import CdUpload
from app.queues import INBOUND, queue

log = logging.getLogger("iep.cds")


def queue_scan(upload: CdUpload) -> bool:
    """Queue the scan of a complete upload (the caller has committed SCANNING). False if
    Redis refused; the maintenance reconciler queues it again later."""
    try:
        queue(INBOUND).enqueue("app.cds.jobs.scan_upload", upload.id, job_id=f"cd-scan-{upload.id}",
                               job_timeout=3600, result_ttl=600, failure_ttl=86400)
    except RedisError as exc:
        log.warning("CD upload %s scan not queued (%s); it will be retried", upload.id, type(exc).__name__)
        return False
    return True


def scan_upload(upload_id: int) -> str:
    """Scan upload `upload_id` (issue 12.2). Implemented in the next commit."""
    raise NotImplementedError
