"""Faults the transfer engine must survive (issue: transfer engine, "Fault tests"):
a worker SIGKILLed mid-transfer, Redis flushed with work queued, and the Blue Light
lane staying fast while every general worker is busy. Real worker processes (worker.py),
real Redis, real Orthanc."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from rq import Queue

from app.dicom import scu
from app.dicom.scp import read_meta
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers import jobs, service
from app.transfers.cli import upsert_node
from app.transfers.inbound import record_arrival
from app.transfers.models import Direction, InboundStudy, RisEntry, Transfer, TransferState
from app.workflow.machine import transition
from tests.conftest import post_form
from tests.dicom_peers import OUR_AE, QUICK
from tests.forms_data import valid_export, valid_import
from tests.pool import STALL, kill_pool, start_pool, wait_for

# Every test here runs the worker pool against real peers and waits for it: slow.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
@pytest.fixture
def slow_pacs(orthanc_factory, gateway_port):
    """A PACS that answers each C-STORE after a delayed ACK (~40 ms): slow enough to kill
    a worker in the middle of a transfer."""
    return orthanc_factory(aet="SLOWPACS", nodelay=False, extra={"SyncStorageArea": True},
                           modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})


@pytest.fixture
def fault_app(app, database_url, redis_url):
    settings = app.config["IEP_SETTINGS"]
    settings.transfer_stall_seconds = STALL
    settings.dicom_timeout_seconds = 10
    for name in ("outbound-bluelight", "outbound", "outbound-batch", "inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    return app


def _import_request(client, login_as) -> Request:
    login_as("requester")
    response = post_form(client, "/requests/new/import", {**valid_import(), "exams-0-exam_date": "2026-09-15"})
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    return req


def _arrive(files: list[Path]) -> InboundStudy:
    """Put files on the gateway as the SCP does (one folder a study, SOP UID names)."""
    study = None
    for path in files:
        meta = read_meta(dcmread(path, stop_before_pixels=True), calling_ae="NUHPACS")
        target = service.gateway_store() / meta.study_uid / f"{meta.sop_uid}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        study = record_arrival(target, meta)
    return study


def test_worker_killed_mid_transfer_loses_and_duplicates_nothing(
    fault_app, client, login_as, pas_patients, slow_pacs, database_url, redis_url, tmp_path
):
    pacs = upsert_node("UHLPACSWFM01", slow_pacs.node.ae_title, "127.0.0.1", slow_pacs.node.port, "local_pacs")
    db.session.commit()
    req = _import_request(client, login_as)
    files = make_study(tmp_path / "nuh", patient_id="NUH998877", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20260915", n_series=3, n_per_series=100, rows=64, cols=64)
    study = _arrive(files)
    assert study.request_id == req.id and study.instances == 300
    transfer = service.create_transfer(request=req, direction=Direction.INBOUND, priority="Standard", source=None,
                                       dest=pacs, study_uids=[study.study_uid], user_id=None, actor="test")
    service.add_inbound_items(transfer, [study])
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    pool = start_pool(fault_app, database_url, redis_url, "inbound-bluelight,inbound=1")
    try:
        wait_for(lambda: db.session.get(Transfer, transfer.id).instances_done >= 60, 60, "the transfer to be under way")
    finally:
        kill_pool(pool)  # SIGKILL: supervisor, worker and work-horse, mid-transfer
    halfway = db.session.get(Transfer, transfer.id)
    assert halfway.state == TransferState.RUNNING.value and halfway.instances_done < 300
    # A new pool; the reconciler finds the run dead (lease expired) and re-queues it.
    pool = start_pool(fault_app, database_url, redis_url, "inbound-bluelight,inbound=1")
    try:
        seen_stalled = []

        def reconciled():  # noqa: ANN202
            jobs.reconcile()
            current = db.session.get(Transfer, transfer.id)
            seen_stalled.append(current.stalled)
            return current.state == TransferState.DELIVERED.value

        wait_for(reconciled, 120, "the resumed transfer to be delivered")
    finally:
        kill_pool(pool, signal.SIGTERM)
    done = db.session.get(Transfer, transfer.id)
    # The watchdog flagged the dead run; once every instance is confirmed the flag goes (8.11).
    assert any(seen_stalled) and not done.stalled
    assert done.attempts >= 2  # resumed by a second run, not started over by hand
    assert done.instances_confirmed == 300
    assert slow_pacs.count_instances() == 300  # each instance there once
    assert len(slow_pacs.sop_uids(study.study_uid)) == 300
    assert db.session.scalar(sa.select(sa.func.count(RisEntry.id))) == 1
    assert db.session.get(Request, req.id).status == Status.DELIVERED


def test_redis_flushed_with_a_transfer_queued_is_requeued_by_the_reconciler(
    fault_app, client, login_as, pas_patients, orthanc, orthanc_factory, gateway_port, tmp_path
):
    remote = orthanc_factory(aet="LEEDSPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    dest = upsert_node("Leeds PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote")
    db.session.commit()
    files = make_study(tmp_path / "s", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20261003", n_series=1, n_per_series=5, rows=64, cols=64)
    assert scu.send_files(orthanc.node, files, config=QUICK).ok
    login_as("requester")
    response = post_form(client, "/requests/new/export", valid_export())
    req = db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Standard", source=pacs,
                                       dest=dest, study_uids=[study_uid], user_id=None, actor="test")
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    assert Queue("outbound", connection=redis_conn()).count == 1
    redis_conn().flushall()  # Redis restarted empty: the job is gone
    assert Queue("outbound", connection=redis_conn()).count == 0
    assert jobs.reconcile() == 1
    assert jobs.reconcile() == 0  # idempotent: the re-queued job is waiting
    from rq import SimpleWorker

    SimpleWorker([Queue("outbound", connection=redis_conn())], connection=redis_conn()).work(burst=True)
    db.session.expire_all()
    assert db.session.get(Transfer, transfer.id).state == TransferState.DELIVERED.value
    assert len(remote.sop_uids(study_uid)) == 5


def test_blue_light_starts_within_two_seconds_while_every_general_worker_is_busy(
    fault_app, client, login_as, pas_patients, orthanc, slow_pacs, database_url, redis_url, tmp_path
):
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    slow = upsert_node("Slow PACS", slow_pacs.node.ae_title, "127.0.0.1", slow_pacs.node.port, "remote")
    db.session.commit()
    files = make_study(tmp_path / "big", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20261004", n_series=1, n_per_series=150, rows=64, cols=64)
    assert scu.send_files(orthanc.node, files, config=QUICK).ok
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    login_as("requester")
    response = post_form(client, "/requests/new/export", valid_export())
    req = db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )
    busy = []
    for _ in range(4):  # four long transfers to the slow PACS: every general worker busy
        t = service.create_transfer(request=None, direction=Direction.OUTBOUND, priority="Standard", source=pacs,
                                    dest=slow, study_uids=[study_uid], user_id=None)
        busy.append(t)
    db.session.commit()
    for t in busy:
        service.enqueue(t, seen_job_id="")
    queue = Queue("outbound", connection=redis_conn())
    with redis_conn().pipeline() as pipe:  # 1,000 standard transfers waiting behind them
        for n in range(1000):
            queue.enqueue(jobs.run_transfer, 10_000_000 + n, pipeline=pipe)
        pipe.execute()
    pool = start_pool(fault_app, database_url, redis_url,
                      "outbound-bluelight=1;outbound-bluelight,outbound,outbound-batch=4")
    try:
        wait_for(lambda: all(db.session.get(Transfer, t.id).state == TransferState.RUNNING.value for t in busy),
                 60, "the four general workers to be busy")
        blue = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Blue Light", source=pacs,
                                       dest=slow, study_uids=[study_uid], user_id=None, actor="test")
        db.session.commit()
        queued_at = time.monotonic()
        service.enqueue(blue, seen_job_id="")
        wait_for(lambda: db.session.get(Transfer, blue.id).started_at is not None, 10,
                 "the Blue Light transfer to start")
        waited = time.monotonic() - queued_at
        assert waited < 2.0, f"Blue Light started after {waited:.2f} s"
        assert all(db.session.get(Transfer, t.id).state == TransferState.RUNNING.value for t in busy)
        assert queue.count >= 990  # the standard backlog is still waiting
    finally:
        kill_pool(pool)


def test_watchdog_flags_a_transfer_that_stopped_moving_and_requeues_it(fault_app, orthanc):
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    transfer = service.create_transfer(request=None, direction=Direction.OUTBOUND, priority="Standard", source=pacs,
                                       dest=pacs, study_uids=["1.2.3"], user_id=None)
    from datetime import timedelta

    from app.timeutil import utcnow

    transfer.state = TransferState.RUNNING.value
    transfer.job_id = "transfer-gone"
    transfer.progressed_at = utcnow() - timedelta(seconds=STALL * 3)
    transfer.lease_until = utcnow() - timedelta(seconds=STALL)  # its run stopped renewing it
    db.session.commit()
    assert jobs.reconcile() == 1
    db.session.expire_all()
    flagged = db.session.get(Transfer, transfer.id)
    assert flagged.stalled and flagged.state == TransferState.QUEUED.value
    assert Queue("outbound", connection=redis_conn()).count == 1
    # A transfer whose run is alive (lease renewed) is left alone.
    flagged.state = TransferState.RUNNING.value
    flagged.lease_until = utcnow() + timedelta(seconds=STALL)
    db.session.commit()
    assert jobs.reconcile() == 0


# --- The database is the scheduler (issue 8.1): retries and windows run through the pool ---


def _export(client, login_as, pacs_node, dest, study_uid: str, priority: str = "Standard") -> Transfer:
    login_as("requester")
    response = post_form(client, "/requests/new/export", valid_export())
    req = db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority=priority, source=pacs_node,
                                       dest=dest, study_uids=[study_uid], user_id=None, actor="test")
    db.session.commit()
    return transfer


def _study_in_pacs(orthanc, tmp_path, n: int = 4) -> str:
    files = make_study(tmp_path / "s", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20261005", n_series=1, n_per_series=n, rows=32, cols=32)
    assert scu.send_files(orthanc.node, files, config=QUICK).ok
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _nothing_in_rq_scheduler() -> bool:
    from rq.registry import ScheduledJobRegistry

    return all(not ScheduledJobRegistry(name, connection=redis_conn()).get_job_ids()
               for name in ("outbound-bluelight", "outbound", "outbound-batch", "inbound-bluelight", "inbound"))


@pytest.mark.parametrize("priority, lanes", [
    ("Standard", "outbound-bluelight,outbound,outbound-batch=1"),
    # A Blue Light retry goes back on the Blue Light lane: a pool with no other worker delivers it.
    ("Blue Light", "outbound-bluelight=1"),
], ids=["standard_retry", "blue_light_retry_on_its_own_lane"])
def test_closed_port_that_opens_later_is_delivered_by_the_pools_own_retry(
    fault_app, client, login_as, pas_patients, orthanc, orthanc_factory, gateway_port, database_url, redis_url,
    tmp_path, priority, lanes
):
    from tests.dicom_peers import free_port

    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    port = free_port()
    later = upsert_node("Derby PACS", "DERBYPACS", "127.0.0.1", port, "remote")
    study_uid = _study_in_pacs(orthanc, tmp_path)
    transfer = _export(client, login_as, pacs, later, study_uid, priority)
    service.enqueue(transfer, seen_job_id="")
    pool = start_pool(fault_app, database_url, redis_url, lanes)
    try:
        first = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).attempts == 1
                         and t.state == TransferState.QUEUED.value and t, 60, "the first attempt to fail")
        assert "connection refused" in first.last_error.lower() and "Trying again in 5 s" in first.last_error
        assert first.not_before is not None and first.job_id == ""  # waits in the database, not in RQ
        assert _nothing_in_rq_scheduler()
        page = client.get(f"/transfers/{transfer.id}").get_data(as_text=True)
        assert "Starts at" in page and "Waiting to retry" in page
        # The PACS comes up on that port; nobody touches the transfer; the pool retries it.
        derby = orthanc_factory(aet="DERBYPACS", dicom_port=port,
                                modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
        done = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state
                        not in ("queued", "running", "verifying")
                        and t, 90, "the retry to finish")
    finally:
        kill_pool(pool)
    assert done.state == TransferState.DELIVERED.value, done.last_error
    assert done.attempts == 2
    assert len(derby.sop_uids(study_uid)) == 4
    assert db.session.get(Request, done.request_id).status == Status.DELIVERED


def test_a_blackhole_destination_is_retried_by_the_pool_then_fails_in_plain_words(
    fault_app, client, login_as, pas_patients, orthanc, database_url, redis_url, tmp_path
):
    """A host that takes the TCP connection and never answers: each attempt ends at the
    association timeout, the pool runs the retry on its own, then the transfer fails."""
    import socket

    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # the kernel completes handshakes; nobody ever reads
    try:
        dest = upsert_node("Silent PACS", "SILENT", "127.0.0.1", hole.getsockname()[1], "remote")
        study_uid = _study_in_pacs(orthanc, tmp_path, n=2)
        transfer = _export(client, login_as, pacs, dest, study_uid)
        transfer.max_attempts = 2
        db.session.commit()
        service.enqueue(transfer, seen_job_id="")
        pool = start_pool(fault_app, database_url, redis_url, "outbound-bluelight,outbound,outbound-batch=1",
                          DICOM_TIMEOUT_SECONDS="2")
        try:
            done = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state == TransferState.FAILED.value
                            and t, 90, "the transfer to give up")
        finally:
            kill_pool(pool)
    finally:
        hole.close()
    assert done.attempts == 2 and "gave up after 2 attempts" in done.last_error
    assert "did not answer" in done.last_error.lower() or "timed out" in done.last_error.lower(), done.last_error
    assert db.session.get(Request, done.request_id).status == Status.FAILED


def test_batch_transfer_waits_for_the_window_then_the_pool_starts_it(
    fault_app, client, login_as, pas_patients, orthanc, orthanc_factory, gateway_port, database_url, redis_url,
    tmp_path
):
    from datetime import timedelta

    from app.timeutil import LONDON, utcnow

    remote = orthanc_factory(aet="LEEDSPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    dest = upsert_node("Leeds PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote")
    study_uid = _study_in_pacs(orthanc, tmp_path, n=3)
    now = utcnow().astimezone(LONDON)
    closed = f"{now + timedelta(hours=2):%H:%M}-{now + timedelta(hours=3):%H:%M}"
    open_now = f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"
    fault_app.config["IEP_SETTINGS"].batch_window = closed
    transfer = _export(client, login_as, pacs, dest, study_uid, "Batch")
    service.enqueue(transfer, seen_job_id="")
    pool = start_pool(fault_app, database_url, redis_url, "outbound-bluelight,outbound,outbound-batch=1",
                      BATCH_WINDOW=closed)
    try:
        time.sleep(4)  # four dispatcher passes
        db.session.expire_all()
        waiting = db.session.get(Transfer, transfer.id)
        assert waiting.state == TransferState.QUEUED.value and waiting.attempts == 0 and waiting.job_id == ""
        assert "overnight window" in waiting.phase and _nothing_in_rq_scheduler()
    finally:
        kill_pool(pool, signal.SIGTERM)
    # The window opens (a pool whose clock is inside it): the dispatcher starts the transfer.
    pool = start_pool(fault_app, database_url, redis_url, "outbound-bluelight,outbound,outbound-batch=1",
                      BATCH_WINDOW=open_now)
    try:
        done = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state == TransferState.DELIVERED.value
                        and t, 60, "the batch transfer to be delivered")
    finally:
        kill_pool(pool, signal.SIGTERM)
    assert done.attempts == 1 and len(remote.sop_uids(study_uid)) == 3


def test_a_due_blue_light_retry_goes_to_the_front_of_its_lane_and_early_jobs_do_not_run(fault_app, orthanc):
    from datetime import timedelta

    from app.timeutil import utcnow

    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    lane = Queue("outbound-bluelight", connection=redis_conn())
    for n in range(3):
        lane.enqueue(jobs.run_transfer, 20_000_000 + n)
    blue = service.create_transfer(request=None, direction=Direction.OUTBOUND, priority="Blue Light", source=pacs,
                                   dest=pacs, study_uids=["1.2.3"], user_id=None)
    blue.not_before = utcnow() + timedelta(seconds=30)  # waiting to retry
    db.session.commit()
    assert service.enqueue(blue, seen_job_id="") is None and jobs.dispatch_due() == 0
    # A stray job for it (say, a duplicate) comes early: it must not run the transfer.
    Queue("outbound-bluelight", connection=redis_conn()).enqueue(jobs.run_transfer, blue.id, job_id="stray")
    assert jobs.run_transfer(blue.id).startswith("not due")
    db.session.expire_all()
    assert db.session.get(Transfer, blue.id).attempts == 0
    blue = db.session.get(Transfer, blue.id)
    blue.not_before = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert jobs.dispatch_due() == 1 and jobs.dispatch_due() == 0  # queued once
    db.session.expire_all()
    assert lane.job_ids[0] == db.session.get(Transfer, blue.id).job_id  # at the front
