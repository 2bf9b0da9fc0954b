"""The transfer engine against real peers (Orthanc as PACS and as the remote hospital,
DCMTK storescu as the sender), run by real RQ workers on the real Redis."""

from __future__ import annotations

import signal
from datetime import date

import pytest
import sqlalchemy as sa
from rq import Queue, SimpleWorker

from app.dicom import scu
from app.dicom.scp import GatewaySCP
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers import engine, jobs, service
from app.transfers.cli import upsert_node
from app.transfers.models import DicomNode, InboundStudy, RisEntry, Transfer, TransferState
from app.workflow.machine import transition
from tests.conftest import csrf_token, post_form
from tests.dicom_peers import OUR_AE, QUICK, run_storescu
from tests.forms_data import valid_export, valid_import
from tests.pool import kill_pool, start_pool, wait_for

LANES = ["outbound-bluelight", "outbound", "outbound-batch", "inbound-bluelight", "inbound"]


@pytest.fixture(scope="module")
def remote(orthanc_factory, gateway_port):
    """The other hospital's PACS (it knows our AE, as NUH's would)."""
    return orthanc_factory(aet="NUHPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})


@pytest.fixture
def nodes(app, orthanc, remote, gateway_port):
    settings = app.config["IEP_SETTINGS"]
    settings.gateway_port = gateway_port
    settings.dicom_timeout_seconds = 10
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    nuh = upsert_node("NUH Radiology PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote",
                      "Nottingham University Hospitals NHS Trust")
    db.session.commit()
    return pacs, nuh


@pytest.fixture
def clean_queues(app):
    for name in LANES:
        Queue(name, connection=redis_conn()).empty()
    yield


def run_workers() -> None:
    """Run every queued transfer job in a real RQ worker (burst), as the pool would."""
    conn = redis_conn()
    SimpleWorker([Queue(name, connection=conn) for name in LANES], connection=conn).work(burst=True)


def _login(app, make_user, role):
    user = make_user(role)
    browser = app.test_client()
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return browser


def _request(client, url, data) -> Request:
    response = post_form(client, url, data)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    db.session.expire_all()
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def test_export_sends_every_instance_from_the_pacs_to_the_remote_node(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, remote, tmp_path, clean_queues
):
    study_files = make_study(tmp_path / "study", patient_id="S1234567", patient_name="SMITH^MARGARET",
                             birth_date="19480314", study_date="20261001", n_series=3, n_per_series=4,
                             accession="UHL0001")
    assert scu.send_files(orthanc.node, study_files, config=QUICK).ok
    login_as("requester")
    req = _request(client, "/requests/new/export", valid_export())
    am = _login(app, make_user, "am_radiology")
    token = csrf_token(am, f"/requests/{req.call_ref}")
    found = am.post(f"/requests/{req.call_ref}/pacs-search", data={"csrf_token": token, "node_id": str(nodes[0].id)},
                    headers={"HX-Request": "true"}).get_data(as_text=True)
    study_uid = _study_uid(study_files[0])
    assert f'name="study_uid" value="{study_uid}"' in found  # the PACS search lists it
    response = am.post(f"/requests/{req.call_ref}/transfers", data={
        "csrf_token": token, "study_uid": study_uid, "source_id": str(nodes[0].id), "dest_id": str(nodes[1].id),
        "priority": "Standard", "report_text": "CT chest: no acute abnormality."})
    assert response.status_code == 302
    db.session.expire_all()
    assert _req(req).status == Status.DOWNLOAD_REQUEST
    run_workers()
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id))
    assert transfer.state == TransferState.DELIVERED.value, transfer.last_error
    held = remote.sop_uids(study_uid)
    sent = {_sop_uid(f) for f in study_files}
    assert sent <= held and len(held) == len(sent) + 1  # every image, plus the report (Encapsulated PDF)
    assert transfer.instances_confirmed == transfer.instances_total == 13
    assert _req(req).status == Status.DELIVERED
    page = am.get(f"/transfers/{transfer.id}").get_data(as_text=True)
    assert "13 of 13 instances sent" in page and "13 confirmed at the destination" in page


def _req(req: Request) -> Request:
    db.session.expire_all()
    return db.session.get(Request, req.id)


@pytest.fixture
def gateway(app, gateway_port, tmp_path):
    """The desk's gateway SCP, recording arrivals as worker.py's gateway process does."""

    def on_stored(path, meta):  # noqa: ANN001
        from app.transfers.gateway import on_stored as record

        with app.app_context():
            try:
                record(path, meta)
            finally:
                db.session.remove()

    from app.transfers.inbound import in_app_context, record_sender_done

    app.config["IEP_SETTINGS"].arrival_quiet_seconds = 0  # complete as soon as the sender releases
    scp = GatewaySCP(ae_title=OUR_AE, port=gateway_port, storage_dir=service.gateway_store(),
                     quarantine_dir=service.gateway_quarantine(), on_stored=on_stored,
                     on_sender_done=in_app_context(app, record_sender_done))
    scp.start()
    yield scp
    scp.stop()


def wait_until_complete(req: Request, seconds: float = 10.0) -> None:
    """Until the gateway has heard the sender release its association for every study of
    the request (the SCP tells the desk just after storescu returns)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.session.expire_all()
        studies = list(db.session.scalars(sa.select(InboundStudy).where(InboundStudy.request_id == req.id)))
        if studies and all(service.arrival_state(s)[0] for s in studies):
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never saw the sender finish")


def _pacs_tags(orthanc, study_uid):
    hits = orthanc.rest_post("/tools/lookup", study_uid)
    study = next(h for h in hits if h["Type"] == "Study")
    instance = orthanc.rest(f"/studies/{study['ID']}/instances")[0]
    return orthanc.rest(f"/instances/{instance['ID']}/tags?simplify")


def _pushed_import(client, login_as, tmp_path, **study: object) -> tuple[Request, InboundStudy]:  # noqa: ANN001
    """An accepted import whose study (Margaret Smith, as NUH files her) a remote pushed to
    the gateway with storescu, arrived whole: the request and its inbound study."""
    login_as("requester")
    req = _request(client, "/requests/new/import", {**valid_import(), "exams-0-exam_date": "2026-09-15",
                                                     "exams-0-exam_code": "CCHES"})
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    files = make_study(tmp_path / "nuh", patient_id="NUH998877", patient_name="SMITH^MARGARET",
                       birth_date="19480314", study_date="20260915", **study)
    pushed = run_storescu(service.our_node(), files, calling_ae="NUHPACS")
    assert pushed.returncode == 0, pushed.stderr
    db.session.expire_all()
    inbound = db.session.scalar(sa.select(InboundStudy))
    wait_until_complete(req)  # the sender released its association: complete, so On IEP
    return req, inbound


def _download_to_pacs(app, make_user, req: Request) -> None:  # noqa: ANN001
    """An analyst presses "Download to PACS"."""
    analyst = _login(app, make_user, "analyst")
    token = csrf_token(analyst, f"/requests/{req.call_ref}")
    assert analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token}).status_code == 302


def test_import_pushed_by_storescu_lands_in_pacs_with_the_s_number_and_one_ris_entry(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, gateway, tmp_path, clean_queues
):
    req, study = _pushed_import(client, login_as, tmp_path, n_series=2, n_per_series=3, accession="NUH42")
    assert study.request_id == req.id and study.instances == 6
    assert _req(req).status == Status.ON_IEP
    _download_to_pacs(app, make_user, req)
    run_workers()
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id))
    assert transfer.state == TransferState.DELIVERED.value, transfer.last_error
    tags = _pacs_tags(orthanc, study.study_uid)
    assert tags["PatientID"] == "S1234567"
    assert "NUH998877" in [item["PatientID"] for item in tags["OtherPatientIDsSequence"]]
    assert tags["PatientName"] == "SMITH^MARGARET" and tags["AccessionNumber"] == "NUH42"
    assert len(orthanc.sop_uids(study.study_uid)) == 6
    entries = db.session.execute(sa.select(RisEntry.study_uid, RisEntry.exam_code, RisEntry.event_date)).all()
    assert entries == [(study.study_uid, "CCHES", date(2026, 9, 15))]
    assert _req(req).status == Status.DELIVERED
    # Running the job again (a retry after a crash, an RQ double run) adds nothing.
    jobs.run_transfer(transfer.id)
    transfer.state = TransferState.QUEUED.value
    db.session.commit()
    jobs.run_transfer(transfer.id)
    assert db.session.scalar(sa.select(sa.func.count(RisEntry.id))) == 1


@pytest.mark.slow
def test_a_big_import_goes_to_pacs_in_chunks_through_the_pool_every_instance_under_the_s_number(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, gateway, database_url, redis_url, tmp_path,
    clean_queues
):
    """A big import sends a chunk of engine.FIX_UP_CHUNK instances while the next is fixed up:
    2 chunks and 5 more go through worker.py's pool as a deployment runs it. Every instance
    reaches the PACS, and every one carries the S number, none as the sender filed it."""
    total = 2 * engine.FIX_UP_CHUNK + 5
    req, study = _pushed_import(client, login_as, tmp_path, n_series=1, n_per_series=total, accession="NUH43",
                                rows=16, cols=16)
    pool = start_pool(app, database_url, redis_url, "inbound-bluelight,inbound=1", ARRIVAL_QUIET_SECONDS="0")
    try:
        _download_to_pacs(app, make_user, req)
        transfer = wait_for(lambda: db.session.scalar(sa.select(Transfer).where(
            Transfer.request_id == req.id, Transfer.state.in_([TransferState.DELIVERED, TransferState.FAILED]))),
            120, "the import to finish")
    finally:
        kill_pool(pool, signal.SIGTERM)
    assert transfer.state == TransferState.DELIVERED.value, transfer.last_error
    assert transfer.instances_confirmed == total
    found = orthanc.rest_post("/tools/lookup", study.study_uid)
    (study_id,) = [hit["ID"] for hit in found if hit["Type"] == "Study"]  # type: ignore[union-attr]
    ids = [instance["ID"] for instance in orthanc.rest(f"/studies/{study_id}/instances")]  # type: ignore[union-attr]
    assert len(ids) == total
    assert {orthanc.rest(f"/instances/{i}/simplified-tags")["PatientID"] for i in ids} == {"S1234567"}


def test_import_stops_when_the_senders_details_disagree_with_the_register(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, gateway, tmp_path, clean_queues
):
    login_as("requester")
    req = _request(client, "/requests/new/import", valid_import())
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    files = make_study(tmp_path / "x", patient_id="S1234567", patient_name="SMITH^MARGARET",
                       birth_date="19480315", study_date="20260901", n_series=1, n_per_series=2)
    assert run_storescu(service.our_node(), files).returncode == 0
    wait_until_complete(req)
    analyst = _login(app, make_user, "analyst")
    token = csrf_token(analyst, f"/requests/{req.call_ref}")
    analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token})
    run_workers()
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer))
    assert transfer.state == TransferState.WAITING_CONFIRMATION.value
    assert "sender '1948-03-15'" in transfer.last_error or "19480315" in transfer.last_error
    assert orthanc.sop_uids(_study_uid(files[0])) == set()  # nothing was stored or rewritten
    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert "I have checked the patient" in page
    analyst.post(f"/transfers/{transfer.id}/confirm", data={"csrf_token": token})
    run_workers()
    db.session.expire_all()
    assert db.session.get(Transfer, transfer.id).state == TransferState.DELIVERED.value


def test_destination_down_retries_then_fails_in_plain_words_and_retry_delivers(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, orthanc_factory, tmp_path, clean_queues,
    gateway_port,
):
    from tests.dicom_peers import free_port

    files = make_study(tmp_path / "s", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20261002", n_series=1, n_per_series=3)
    assert scu.send_files(orthanc.node, files, config=QUICK).ok
    port = free_port()
    down = upsert_node("Derby PACS", "DERBYPACS", "127.0.0.1", port, "remote")
    login_as("requester")
    req = _request(client, "/requests/new/export", valid_export())
    transfer = service.create_transfer(request=req, direction=service.Direction.OUTBOUND, priority="Standard",
                                       source=nodes[0], dest=down, study_uids=[_study_uid(files[0])],
                                       user_id=None, actor="test")
    transfer.max_attempts = 2
    db.session.commit()
    jobs.run_transfer(transfer.id)
    db.session.expire_all()
    transfer = db.session.get(Transfer, transfer.id)
    assert transfer.state == TransferState.QUEUED.value and "Trying again" in transfer.last_error
    transfer.not_before = None
    db.session.commit()
    jobs.run_transfer(transfer.id)
    db.session.expire_all()
    transfer = db.session.get(Transfer, transfer.id)
    assert transfer.state == TransferState.FAILED.value
    assert "connection refused" in transfer.last_error.lower() and "gave up after 2 attempts" in transfer.last_error
    assert _req(req).status == Status.FAILED
    # The node comes up; Retry delivers.
    orthanc_factory(aet="DERBYPACS", dicom_port=port, modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    service.retry(transfer, make_user("analyst").id)  # changes the row; the caller commits, then enqueues
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    run_workers()
    db.session.expire_all()
    assert db.session.get(Transfer, transfer.id).state == TransferState.DELIVERED.value
    assert _req(req).status == Status.DELIVERED


def _study_uid(path):
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _sop_uid(path):
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_gateway_copies_are_purged_after_15_days_only_once_delivered_or_with_a_reason(
    app, client, login_as, pas_patients, tmp_path
):
    from datetime import timedelta

    from app.audit import AuditEvent
    from app.timeutil import freeze, utcnow

    login_as("requester")
    req = _request(client, "/requests/new/import", valid_import())
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    transition(req, Status.ON_IEP, actor_id=None, actor="test")
    folders = []
    for n, delivered in enumerate((True, False, False)):
        folder = tmp_path / f"study{n}"
        folder.mkdir()
        (folder / "1.2.3.dcm").write_bytes(b"x")
        folders.append(folder)
        db.session.add(InboundStudy(study_uid=f"1.2.840.{n}", request_id=req.id, folder=str(folder),
                                    delivered_at=utcnow() if delivered else None,
                                    purge_reason="sender re-sent it as a new study" if n == 2 else ""))
    db.session.commit()
    assert jobs.purge_gateway() == 0  # nothing is 15 days old yet
    with freeze(utcnow() + timedelta(days=15, minutes=1)):
        assert jobs.purge_gateway() == 2
    assert not folders[0].exists() and folders[1].exists() and not folders[2].exists()
    db.session.expire_all()
    assert _req(req).status == Status.PURGED  # its images were never delivered
    assert db.session.scalar(sa.select(sa.func.count(AuditEvent.id)).where(AuditEvent.action == "purge")) == 2


def test_batch_transfers_wait_for_the_overnight_window(app, nodes, clean_queues):
    from datetime import datetime

    from rq.registry import ScheduledJobRegistry

    from app.timeutil import LONDON, freeze
    from app.transfers.lanes import in_window, next_window_start

    assert in_window(datetime(2026, 11, 28, 22, 0, tzinfo=LONDON), "20:00-07:00")
    assert in_window(datetime(2026, 11, 29, 6, 59, tzinfo=LONDON), "20:00-07:00")
    assert not in_window(datetime(2026, 11, 28, 12, 0, tzinfo=LONDON), "20:00-07:00")
    assert next_window_start(datetime(2026, 11, 28, 12, 0, tzinfo=LONDON), "20:00-07:00") == datetime(
        2026, 11, 28, 20, 0, tzinfo=LONDON)
    transfer = service.create_transfer(request=None, direction=service.Direction.OUTBOUND, priority="Batch",
                                       source=nodes[0], dest=nodes[1], study_uids=["1.2.3"], user_id=None)
    db.session.commit()
    with freeze(datetime(2026, 11, 28, 12, 0, tzinfo=LONDON)):
        assert service.enqueue(transfer, seen_job_id="") is None
        assert jobs.dispatch_due() == 0
    # Not handed to RQ's scheduler (which only a worker on the same queue would run):
    # the row waits, and the dispatcher queues it when the window opens.
    assert Queue("outbound-batch", connection=redis_conn()).count == 0
    assert not ScheduledJobRegistry("outbound-batch", connection=redis_conn()).get_job_ids()
    assert transfer.job_id == "" and "opens 20:00" in transfer.phase
    with freeze(datetime(2026, 11, 28, 20, 0, 30, tzinfo=LONDON)):
        assert jobs.dispatch_due() == 1
    db.session.expire_all()
    assert Queue("outbound-batch", connection=redis_conn()).job_ids == [db.session.get(Transfer, transfer.id).job_id]


def test_node_register_page_cli_and_echo_button(app, client, login_as, make_user, runner, orthanc):
    result = runner.invoke(args=["nodes", "add", "--name", "Test PACS", "--ae-title", orthanc.node.ae_title,
                                 "--host", "127.0.0.1", "--port", str(orthanc.node.port), "--role", "local_pacs"])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(args=["nodes", "add", "--name", "Bad", "--ae-title", "A" * 17, "--host", "h", "--port", "104"])
    assert bad.exit_code != 0 and "AE title" in bad.output
    long_host = runner.invoke(args=["nodes", "add", "--name", "Long", "--ae-title", "LONG", "--host", "h" * 300,
                                    "--port", "104"])
    assert long_host.exit_code != 0 and "The host can be at most 255 characters; this one has 300." in long_host.output
    db.session.expire_all()
    assert db.session.scalar(sa.select(DicomNode).where(DicomNode.name == "Long")) is None
    login_as("analyst")
    assert client.get("/admin/nodes").status_code == 403  # node settings are AM radiology's
    am = _login(app, make_user, "am_radiology")
    page = am.get("/admin/nodes").get_data(as_text=True)
    assert "Test PACS" in page
    token = csrf_token(am, "/admin/nodes")
    refused = am.post("/admin/nodes", data={"csrf_token": token, "name": "X", "ae_title": "X", "host": "",
                                            "port": "99999", "role": "remote"})
    assert refused.status_code == 422
    assert "The port is a number from 1 to 65535." in refused.get_data(as_text=True)
    node_id = db.session.scalar(sa.select(sa.text("id")).select_from(sa.text("dicom_nodes")))
    answer = am.post(f"/admin/nodes/{node_id}/echo", data={"csrf_token": token}, headers={"HX-Request": "true"})
    assert "Answered in" in answer.get_data(as_text=True)
    upsert_node("Nobody home", "NOBODY", "127.0.0.1", 9, "remote")
    db.session.commit()
    down_id = db.session.scalar(
        sa.select(sa.text("id")).select_from(sa.text("dicom_nodes")).where(sa.text("name = 'Nobody home'"))
    )
    answer = am.post(f"/admin/nodes/{down_id}/echo", data={"csrf_token": token}, headers={"HX-Request": "true"})
    assert "connection refused" in answer.get_data(as_text=True).lower()


def test_requesters_cannot_start_or_steer_transfers(app, client, login_as, pas_patients, nodes):
    login_as("requester")
    req = _request(client, "/requests/new/export", valid_export())
    token = csrf_token(client, f"/requests/{req.call_ref}")
    assert client.post(f"/requests/{req.call_ref}/pacs-search", data={"csrf_token": token}).status_code == 403
    data = {"csrf_token": token, "study_uid": "1.2"}
    assert client.post(f"/requests/{req.call_ref}/transfers", data=data).status_code == 403
    assert "Search the local PACS" not in client.get(f"/requests/{req.call_ref}").get_data(as_text=True)


def test_direct_pull_from_the_other_hospital_lands_on_the_gateway_and_then_in_pacs(
    app, client, login_as, make_user, pas_patients, nodes, orthanc, remote, tmp_path, clean_queues
):
    """The other institution exposes a node: search it, retrieve to the gateway (On IEP),
    then Download to PACS as for any arrival."""
    files = make_study(tmp_path / "nuh", patient_id="9990000018", patient_name="SMITH^MARGARET",
                       birth_date="19480314", study_date="20260820", n_series=1, n_per_series=4, accession="NUH77")
    own_id = make_study(tmp_path / "nuh2", patient_id="NUH555111", patient_name="SMITH^MARGARET",
                        birth_date="19480314", study_date="20260821", n_series=1, n_per_series=2, accession="NUH78")
    assert scu.send_files(remote.node, files + own_id, config=QUICK).ok
    study_uid = _study_uid(files[0])
    login_as("requester")
    req = _request(client, "/requests/new/import", {**valid_import(), "exams-0-exam_date": "2026-08-20"})
    analyst = _login(app, make_user, "analyst")
    token = csrf_token(analyst, f"/requests/{req.call_ref}")
    found = analyst.post(f"/requests/{req.call_ref}/pacs-search",
                         data={"csrf_token": token, "node_id": str(nodes[1].id)},
                         headers={"HX-Request": "true"}).get_data(as_text=True)
    assert f'value="{study_uid}"' in found  # found by the NHS number the sender files under
    assert f'value="{_study_uid(own_id[0])}"' in found and "NUH555111" in found  # by name and birth date
    response = analyst.post(f"/requests/{req.call_ref}/transfers", data={
        "csrf_token": token, "study_uid": study_uid, "source_id": str(nodes[1].id), "priority": "Standard"})
    assert response.status_code == 302
    run_workers()
    db.session.expire_all()
    pull = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id))
    assert pull.state == TransferState.DELIVERED.value, pull.last_error
    assert _req(req).status == Status.ON_IEP
    study = db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study_uid))
    assert study.request_id == req.id and study.instances == 4
    analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token})
    run_workers()
    db.session.expire_all()
    assert _req(req).status == Status.DELIVERED
    assert _pacs_tags(orthanc, study_uid)["PatientID"] == "S1234567"
