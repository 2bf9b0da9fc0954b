"""Scheduled work on the maintenance queue: the 14-day auto-cancel (guideline 2.4 d), the
cron registration, and the pool's cron process (issue 5).

Time is driven with `app.timeutil.freeze`, never by sleeping.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq.cron import CronScheduler

from app import audit
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.schedule import register_cron
from app.timeutil import freeze
from app.workflow import jobs, notices
from app.workflow.models import Message, MessageKind
from tests.forms_data import valid_import
from tests.test_mail import (  # noqa: F401 - fixtures
    REQUESTER_MAIL,
    T0,
    analyst,
    maintenance,
    move,
    outbox,
    requester,
    run_jobs,
    smtp,
    submit,
)

S = Status
NOTE = "Please give the date of the CT."
ROOT = Path(__file__).resolve().parent.parent


def reload(req: Request) -> Request:
    db.session.commit()  # end the read transaction: see what the job committed
    return db.session.get(Request, req.id)


# --- guideline 2.4 d: Awaiting Details for 14 days -> Cancelled -------------------------


def test_awaiting_details_for_14_days_is_cancelled_with_a_notice(client, requester, analyst, maintenance):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    asked = len(outbox())

    with freeze(T0 + timedelta(days=13, hours=23)):
        assert jobs.auto_cancel_stale() == 0
    assert reload(req).status == S.AWAITING_DETAILS

    with freeze(T0 + timedelta(days=14, minutes=1)):
        job = maintenance.enqueue(jobs.auto_cancel_stale)
        run_jobs(maintenance)  # through a real worker, as the cron process would have it run
        assert job.return_value() == 1
    req = reload(req)
    assert req.status == S.CANCELLED
    assert req.status_note == jobs.AUTO_CANCEL_NOTE

    [system] = db.session.scalars(
        sa.select(Message).where(Message.request_id == req.id, Message.body.contains("Cancelled automatically"))
    ).all()
    assert system.kind == MessageKind.SYSTEM.value and system.author_id is None
    assert "Awaiting Details to Cancelled" in system.body and "guideline 2.4 d" in system.body

    [event] = db.session.scalars(
        sa.select(audit.AuditEvent).where(
            audit.AuditEvent.request_id == req.id,
            audit.AuditEvent.action == audit.Action.STATUS_CHANGE.value,
            audit.AuditEvent.detail.contains("-> Cancelled"),
        )
    ).all()
    assert event.user_id is None and event.actor == "system: auto-cancel"  # issue 11.9: names who did it
    assert event.detail == f"{req.call_ref} Awaiting Details -> Cancelled"

    rows = outbox()
    assert len(rows) == asked + 1
    cancel = rows[-1]
    assert cancel.to_addr == REQUESTER_MAIL
    assert cancel.subject == f"{req.call_ref}: your image request was cancelled"
    assert "within 14 days" in cancel.body

    # Idempotent: a second run (a day later, or the same minute) cancels nothing more.
    with freeze(T0 + timedelta(days=15)):
        assert jobs.auto_cancel_stale() == 0
    assert len(outbox()) == asked + 1
    assert db.session.scalar(
        sa.select(sa.func.count()).select_from(audit.AuditEvent).where(
            audit.AuditEvent.request_id == req.id, audit.AuditEvent.detail.contains("-> Cancelled")
        )
    ) == 1


def test_only_requests_waiting_for_details_are_cancelled(client, requester, analyst):
    new = submit(client, valid_import(), exam="CT head")
    accepted = submit(client, valid_import(), exam="CT chest")
    fresh = submit(client, valid_import(), exam="MRI knee")
    with freeze(T0):
        move(accepted, S.ACCEPTED, actor_id=analyst.id)
    with freeze(T0 + timedelta(days=10)):
        move(fresh, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    with freeze(T0 + timedelta(days=20)):
        assert jobs.auto_cancel_stale() == 0
    assert [reload(r).status for r in (new, accepted, fresh)] == [S.NEW, S.ACCEPTED, S.AWAITING_DETAILS]


def test_details_received_in_time_stop_the_clock(client, requester, analyst):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    with freeze(T0 + timedelta(days=10)):
        move(req, S.NEW, actor_id=analyst.id, note="Details received.")
    with freeze(T0 + timedelta(days=12)):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="One more thing.")
    with freeze(T0 + timedelta(days=20)):  # 8 days since it was asked again
        assert jobs.auto_cancel_stale() == 0
    with freeze(T0 + timedelta(days=26, minutes=1)):
        assert jobs.auto_cancel_stale() == 1
    assert reload(req).status == S.CANCELLED


def test_one_failing_request_does_not_stop_the_others(client, requester, analyst, monkeypatch):
    first = submit(client, valid_import(), exam="CT head")
    second = submit(client, valid_import(), exam="CT chest")
    with freeze(T0):
        move(first, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
        move(second, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    broken_ref = first.call_ref
    real = notices.on_transition

    def flaky(req, old, new):  # noqa: ANN001
        if req.call_ref == broken_ref:
            raise RuntimeError("mail template missing")
        real(req, old, new)

    monkeypatch.setattr(notices, "on_transition", flaky)
    with freeze(T0 + timedelta(days=15)):
        assert jobs.auto_cancel_stale() == 1
    assert [reload(r).status for r in (first, second)] == [S.AWAITING_DETAILS, S.CANCELLED]

    monkeypatch.setattr(notices, "on_transition", real)
    with freeze(T0 + timedelta(days=15, minutes=15)):  # the next run
        assert jobs.auto_cancel_stale() == 1
    assert reload(first).status == S.CANCELLED
    cancels = [r for r in outbox() if "cancelled" in r.subject]
    assert sorted(r.subject for r in cancels) == sorted(
        f"{ref}: your image request was cancelled" for ref in (first.call_ref, second.call_ref)
    )


# --- RQ's CronScheduler: the periodic jobs on the maintenance queue ----------------------


def test_cron_registers_flush_and_auto_cancel_on_the_maintenance_queue(app, maintenance):
    scheduler = CronScheduler(connection=redis_conn(), name="iep-test-cron")
    register_cron(scheduler)
    registered = {(j.func_name, j.queue_name, j.interval) for j in scheduler.get_jobs()}
    assert registered == {
        ("app.workflow.mail.flush_outbox", "maintenance", 60),
        ("app.workflow.jobs.auto_cancel_stale", "maintenance", 15 * 60),
        ("app.transfers.jobs.reconcile", "maintenance", 30),
        ("app.transfers.jobs.purge_gateway", "maintenance", 3600),
        ("app.transfers.quarantine.purge_quarantine", "maintenance", 3600),
        ("app.transfers.jobs.settle_arrivals", "maintenance", 30),
        ("app.transfers.jobs.auto_download", "maintenance", 60),
        ("app.cds.jobs.requeue_scans", "maintenance", 60),
        ("app.cds.jobs.settle_sent", "maintenance", 30),
        ("app.cds.jobs.purge_cds", "maintenance", 3600),
    }

    enqueued = scheduler.enqueue_jobs()
    assert len(enqueued) == 10
    assert sorted(j.func_name for j in maintenance.jobs) == [
        "app.cds.jobs.purge_cds",
        "app.cds.jobs.requeue_scans",
        "app.cds.jobs.settle_sent",
        "app.transfers.jobs.auto_download",
        "app.transfers.jobs.purge_gateway",
        "app.transfers.jobs.reconcile",
        "app.transfers.jobs.settle_arrivals",
        "app.transfers.quarantine.purge_quarantine",
        "app.workflow.jobs.auto_cancel_stale",
        "app.workflow.mail.flush_outbox",
    ]
    assert scheduler.enqueue_jobs() == []  # not due again until their interval has passed

    waiting = maintenance.jobs
    run_jobs(maintenance)  # each job makes its own app context inside the worker
    assert [j.get_status() for j in waiting] == ["finished"] * 10
    assert [j.return_value() for j in waiting] == [0] * 10


@pytest.fixture
def pool_env(app, database_url: str, redis_url: str) -> dict[str, str]:  # noqa: ANN001
    """The environment a worker pool of this test run would be started with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "IEP_"))}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, SECRET_KEY="pool-test-secret",
               PYTHONPATH=str(ROOT))
    db.session.commit()
    return env


def _wait_for(predicate, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")
@pytest.mark.slow


def test_worker_pool_runs_a_supervised_cron_process(
    client, requester, analyst, smtp, pool_env, maintenance, tmp_path
):
    """The pool starts the cron process, replaces it when it dies, stops it on SIGTERM;
    its maintenance worker (forking, as in production) delivers the mail."""
    smtp.start()
    req = submit(client, valid_import())
    move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)  # queues mail-1
    pool_env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port), SMTP_FROM="iep-desk@uhl-tr.nhs.uk")
    log_file = tmp_path / "pool.log"
    code = (
        "import logging, worker; "
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s'); "
        "worker.supervise([(['maintenance'], 1)])"
    )
    with open(log_file, "w") as log:
        pool = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=pool_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = re.compile(r"started (\S+\.cron) \([^)]*pid (\d+)\)")
    try:
        first = _wait_for(lambda: started.findall(log_file.read_text()))
        name, pid = first[0]
        conn = maintenance.connection
        # The cron process registers itself with RQ and its jobs run on the maintenance lane.
        _wait_for(lambda: name in [s.name for s in CronScheduler.all(conn)])
        _wait_for(lambda: "flush_outbox" in log_file.read_text() and "auto_cancel_stale" in log_file.read_text())
        # The worker logs after it has recorded the send, which is after the server's 250.
        _wait_for(lambda: f"job mail-1 mail 1 for {req.call_ref} sent by SMTP" in log_file.read_text())
        assert [e.rcpt_tos for e in smtp.inbox.envelopes] == [[REQUESTER_MAIL]]

        os.kill(int(pid), signal.SIGKILL)
        replaced = _wait_for(lambda: [p for n, p in started.findall(log_file.read_text()) if p != pid])
        assert "exited with -9; replacing it" in log_file.read_text()
        # The replacement is up when it has registered itself under the same name.
        _wait_for(lambda: CronScheduler.fetch(name, conn).pid == int(replaced[0]))

        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=60) == 0
        assert not _alive(int(replaced[0]))
        assert "stop requested" in log_file.read_text()
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; it only waits for its parent to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
