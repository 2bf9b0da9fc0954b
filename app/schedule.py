"""The desk's periodic jobs, registered on RQ's own CronScheduler (rq.cron, RQ 3).

`worker.py` runs one CronScheduler process per pool; it only *enqueues* these jobs on the
`maintenance` queue, where the maintenance worker runs them. No timer loops live in the
web process. Every job listed here is idempotent, so two pools (two cron processes) or a
run enqueued twice do no harm, only duplicate work.

Add a job by adding a line to `PERIODIC`. The queues themselves, and the app context each
job opens, are in `app/queues.py`; the list lives here because it imports the job bodies
of every area, and `app/queues.py` must import none (every area imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.cds import jobs as cd_jobs
from app.queues import MAINTENANCE
from app.transfers import jobs as transfer_jobs
from app.transfers import quarantine
from app.workflow import jobs, mail


@dataclass(frozen=True)
class Periodic:
    func: Callable[[], object]
    every_seconds: int
    job_timeout: int
    # A run still waiting after this long is dropped (the next one replaces it), so runs
    # do not pile up while the maintenance worker is down.
    ttl: int


PERIODIC: tuple[Periodic, ...] = (
    # Outbox retries and anything the web side could not enqueue (Redis down).
    Periodic(mail.flush_outbox, every_seconds=60, job_timeout=300, ttl=300),
    # Guideline 2.4 d: Awaiting Details for 14 days -> Cancelled.
    Periodic(jobs.auto_cancel_stale, every_seconds=15 * 60, job_timeout=600, ttl=15 * 60),
    # Transfers whose job was lost (Redis restarted, worker killed) or that stopped moving.
    Periodic(transfer_jobs.reconcile, every_seconds=30, job_timeout=120, ttl=60),
    # Appendix 1 "Purged": gateway copies go 15 days after arrival, once delivered.
    Periodic(transfer_jobs.purge_gateway, every_seconds=3600, job_timeout=1800, ttl=3600),
    # ... and so do the files it refused (issue 8 point 9).
    Periodic(quarantine.purge_quarantine, every_seconds=3600, job_timeout=1800, ttl=3600),
    # Pushed studies whose sender finished and that stayed quiet: their requests say On IEP.
    Periodic(transfer_jobs.settle_arrivals, every_seconds=30, job_timeout=120, ttl=60),
    # AUTO_DOWNLOAD=1: matched arrivals go to PACS without an analyst's click.
    Periodic(transfer_jobs.auto_download, every_seconds=60, job_timeout=300, ttl=120),
    # CD scans whose job was lost (Redis down at the upload's end, a worker killed mid-scan).
    Periodic(cd_jobs.requeue_scans, every_seconds=60, job_timeout=120, ttl=120),
    # A CD whose transfer delivered says Sent (or Scanned again after a cancel).
    Periodic(cd_jobs.settle_sent, every_seconds=30, job_timeout=120, ttl=60),
    # Uploaded CD contents go 15 days after delivery, like the gateway's copies (issue 12.6).
    Periodic(cd_jobs.purge_cds, every_seconds=3600, job_timeout=1800, ttl=3600),
)


def register_cron(scheduler) -> None:  # noqa: ANN001 - rq.cron.CronScheduler
    """Register every periodic job on `scheduler`, on the maintenance queue."""
    for job in PERIODIC:
        scheduler.register(
            job.func,
            queue_name=MAINTENANCE,
            interval=job.every_seconds,
            job_timeout=job.job_timeout,
            ttl=job.ttl,
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
        )
