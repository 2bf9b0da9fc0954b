"""Transfers tell the truth (issue 8): a retrieval is checked against the source's own
list, a partial one is never sent or said Delivered, a retry fetches only what is
missing, each missing instance is named, and a study a C-MOVE brings for an export never
shows up as an arrival. Real pool processes (worker.py), a scripted C-GET peer (pynetdicom),
Orthanc."""

from __future__ import annotations

import copy
import signal
import time

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from app.dicom import scu
from app.dicom.synth import make_instance, make_study
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers import service
from app.transfers.cli import upsert_node
from app.transfers.models import Direction, InboundStudy, Transfer, TransferItem, TransferState
from app.workflow.mail import OutboxEmail
from tests.conftest import post_form
from tests.dicom_peers import OUR_AE, QUICK
from tests.forms_data import valid_export, valid_import
from tests.test_transfer_faults import fault_app, kill_pool, start_pool, wait_for  # noqa: F401 - fixture
from tests.test_transfers import gateway  # noqa: F401 - fixture

LANES = "outbound-bluelight,outbound,outbound-batch=1"
STUDY = "1.2.826.0.1.3680043.10.543.77"
SERIES = STUDY + ".2"


def _export_request(client, login_as=None) -> Request:
    if login_as is not None:
        login_as("requester")
    response = post_form(client, "/requests/new/export", valid_export())
    return db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )


class ScriptedPacs:
    """A PACS that lists four instances of one series and sends them by C-GET; while
    `broken`, the fourth goes out without a Patient ID, so our side refuses it and the
    final response is 0xB000 with the Failed SOP Instance UID List."""

    def __init__(self) -> None:
        common = dict(patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                      study_uid=STUDY, series_uid=SERIES, study_date="20261006", accession="ACC77",
                      series_number=2, description="AX T2", rows=16, cols=16)
        self.instances = [make_instance(instance_number=n, **common) for n in range(1, 5)]
        for ds in self.instances:
            ds.SeriesDescription = "AX T2"
        self.broken = True
        self.gets: list[tuple[str, list[str]]] = []  # (level, SOP UIDs asked for)

    @property
    def fourth(self) -> Dataset:
        return self.instances[3]

    def handle_find(self, event):  # noqa: ANN001, ANN201
        query = event.identifier
        level = query.QueryRetrieveLevel
        if level == "SERIES":
            match = Dataset()
            match.QueryRetrieveLevel = "SERIES"
            match.StudyInstanceUID, match.SeriesInstanceUID = STUDY, SERIES
            match.SeriesNumber, match.SeriesDescription = "2", "AX T2"
            yield 0xFF00, match
        elif level == "IMAGE":
            for ds in self.instances:
                match = Dataset()
                match.QueryRetrieveLevel = "IMAGE"
                match.StudyInstanceUID, match.SeriesInstanceUID = STUDY, SERIES
                match.SOPInstanceUID, match.SOPClassUID = ds.SOPInstanceUID, ds.SOPClassUID
                match.InstanceNumber = ds.InstanceNumber
                yield 0xFF00, match

    def handle_get(self, event):  # noqa: ANN001, ANN201
        query = event.identifier
        wanted = query.get("SOPInstanceUID", "")
        wanted = [str(u) for u in ([wanted] if isinstance(wanted, str) else wanted) if u]
        self.gets.append((query.QueryRetrieveLevel, wanted))
        chosen = [ds for ds in self.instances if not wanted or ds.SOPInstanceUID in wanted]
        yield len(chosen)
        for ds in chosen:
            if ds is self.fourth and self.broken:
                bad = copy.deepcopy(ds)
                del bad.PatientID
                yield 0xFF00, bad
            else:
                yield 0xFF00, ds


@pytest.fixture
def scripted(fake_scp):
    pacs = ScriptedPacs()
    node = fake_scp([(evt.EVT_C_FIND, pacs.handle_find), (evt.EVT_C_GET, pacs.handle_get)], ae_title="SCRIPTED",
                    qr=True)
    pacs.node = node
    return pacs
@pytest.mark.slow


def test_a_partial_c_get_is_never_sent_and_retry_fetches_only_the_missing_instance(
    fault_app, client, login_as, pas_patients, scripted, orthanc_factory, gateway_port, database_url, redis_url,
    make_user, app
):
    remote = orthanc_factory(aet="KGHPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    source = upsert_node("UHLPACSWFM01", scripted.node.ae_title, "127.0.0.1", scripted.node.port, "local_pacs")
    dest = upsert_node("Kettering PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote")
    fault_app.config["IEP_SETTINGS"].desk_email = "iep-desk@uhl-tr.nhs.uk"
    req = _export_request(client, login_as)
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Standard", source=source,
                                       dest=dest, study_uids=[STUDY], user_id=None, actor="test")
    transfer.max_attempts = 2
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    pool = start_pool(fault_app, database_url, redis_url, LANES, DESK_EMAIL="iep-desk@uhl-tr.nhs.uk")
    try:
        first = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).attempts == 1
                         and t.state == TransferState.QUEUED.value and t, 60, "the first attempt to end")
        # The final C-GET response said 0xB000 and named the instance: the row keeps its word.
        item = db.session.scalar(sa.select(TransferItem).where(TransferItem.sop_uid == scripted.fourth.SOPInstanceUID))
        assert not item.path and "reported it could not send it" in item.error and "0xB000" in item.error
        assert "Trying again in 5 s" in first.last_error
        failed = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state == TransferState.FAILED.value
                          and t, 90, "the transfer to give up on the missing instance")
    finally:
        kill_pool(pool)
    # Two attempts, each a C-GET: the whole study, then only the instance still missing.
    assert failed.attempts == 2
    assert scripted.gets == [("STUDY", []), ("IMAGE", [scripted.fourth.SOPInstanceUID])]
    # Nothing was sent: a study with an instance missing never leaves, and is never Delivered.
    assert remote.count_instances() == 0
    assert db.session.get(Request, req.id).status == Status.FAILED
    assert "1 of 4 instances of the study did not come from UHLPACSWFM01" in failed.last_error
    assert "series 2 (AX T2), instance 4, " + scripted.fourth.SOPInstanceUID in failed.last_error
    # The widget lists it, with the source's own word (0xB000, the Failed SOP Instance UID List).
    am = app.test_client()
    user = make_user("am_radiology")
    post_form(am, "/login", {"email": user.email, "password": "correct-horse-9"})
    page = am.get(f"/transfers/{transfer.id}").get_data(as_text=True)
    assert "1 instance did not make it" in page
    assert f"<code>{scripted.fourth.SOPInstanceUID}</code>" in page and "AX T2" in page
    # (This time every sub-operation asked for failed: pynetdicom's SCP answers 0xA702.)
    assert "UHLPACSWFM01 reported it could not send it (remote out of resources (0xA702)" in page
    # The desk is e-mailed the same list.
    mail = db.session.scalar(sa.select(OutboxEmail).where(OutboxEmail.to_addr == "iep-desk@uhl-tr.nhs.uk"))
    assert mail is not None and f"transfer {transfer.id} failed" in mail.subject
    assert f"Series 2 (AX T2), instance 4, SOP Instance UID {scripted.fourth.SOPInstanceUID}" in mail.body
    # The PACS is fixed; Retry fetches only that instance, and now everything is delivered.
    scripted.broken = False
    page = am.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    assert am.post(f"/transfers/{transfer.id}/retry", data={"csrf_token": token}).status_code == 302
    pool = start_pool(fault_app, database_url, redis_url, LANES)
    try:
        done = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state == TransferState.DELIVERED.value
                        and t, 60, "the retry to deliver")
    finally:
        kill_pool(pool)
    assert scripted.gets[2:] == [("IMAGE", [scripted.fourth.SOPInstanceUID])]
    assert remote.sop_uids(STUDY) == {ds.SOPInstanceUID for ds in scripted.instances}
    assert done.instances_confirmed == done.instances_total == 4
    assert "did not make it" not in am.get(f"/transfers/{transfer.id}").get_data(as_text=True)
@pytest.mark.slow


def test_a_pacs_frozen_mid_c_get_is_resumed_by_the_pool_and_nothing_is_lost(
    fault_app, client, login_as, pas_patients, orthanc_factory, gateway_port, database_url, redis_url, tmp_path
):
    """SIGSTOP the PACS in the middle of a C-GET: the attempt ends at the DIMSE timeout,
    what arrived is kept, the pool's retry fetches only the rest once the PACS is back."""
    pacs_peer = orthanc_factory(aet="FROZEN", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)},
                                nodelay=False, extra={"SyncStorageArea": True})  # ~40 ms an instance
    remote = orthanc_factory(aet="LGHPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    files = make_study(tmp_path / "s", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20261007", n_series=2, n_per_series=60, rows=32, cols=32)
    assert scu.send_files(pacs_peer.node, files, config=QUICK).ok
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    source = upsert_node("UHLPACSWFM01", pacs_peer.node.ae_title, "127.0.0.1", pacs_peer.node.port, "local_pacs")
    dest = upsert_node("LGH PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote")
    req = _export_request(client, login_as)
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Standard", source=source,
                                       dest=dest, study_uids=[study_uid], user_id=None, actor="test")
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    pool = start_pool(fault_app, database_url, redis_url, LANES, DICOM_TIMEOUT_SECONDS="2")
    try:
        def staged() -> int:
            folder = service.staging_dir(transfer.id) / study_uid
            return len(list(folder.glob("*.dcm"))) if folder.is_dir() else 0

        wait_for(lambda: staged() >= 10, 60, "the C-GET to be under way")
        pacs_peer.proc.send_signal(signal.SIGSTOP)
        try:
            first = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).attempts >= 1
                             and t.state == TransferState.QUEUED.value and t, 60, "the frozen attempt to end")
            assert "did not come from" in first.last_error and "Trying again" in first.last_error
            assert remote.count_instances() == 0  # nothing sent while incomplete
        finally:
            pacs_peer.proc.send_signal(signal.SIGCONT)
        done = wait_for(lambda: (t := db.session.get(Transfer, transfer.id)).state
                        not in ("queued", "running", "verifying")
                        and t, 120, "the retry to finish")
    finally:
        kill_pool(pool)
    assert done.state == TransferState.DELIVERED.value, done.last_error
    assert len(remote.sop_uids(study_uid)) == 120 and done.instances_confirmed == 120
    items = sa.select(sa.func.count(TransferItem.id)).where(TransferItem.transfer_id == transfer.id)
    assert db.session.scalar(items) == 120


def test_export_from_a_pacs_without_c_get_goes_by_c_move_to_staging_not_to_the_arrivals(
    app, client, login_as, pas_patients, orthanc, orthanc_factory, gateway, gateway_port, tmp_path
):
    """A PACS reached by C-MOVE sends the study to our gateway; those instances belong to
    the export, even while an import request for the same patient waits for images."""
    from rq import Queue, SimpleWorker

    from app.extensions import redis_conn
    from app.workflow.machine import transition

    app.config["IEP_SETTINGS"].gateway_port = gateway_port
    app.config["IEP_SETTINGS"].dicom_timeout_seconds = 10
    remote = orthanc_factory(aet="KGHPACS2", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    files = make_study(tmp_path / "s", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20260915", n_series=1, n_per_series=5, rows=32, cols=32)
    assert scu.send_files(orthanc.node, files, config=QUICK).ok
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    pacs.supports_get = False  # C-MOVE only
    dest = upsert_node("Kettering PACS", remote.node.ae_title, "127.0.0.1", remote.node.port, "remote")
    db.session.commit()
    # An open import request for the same patient, with an exam on the study's date.
    login_as("requester")
    response = post_form(client, "/requests/new/import", {**valid_import(), "exams-0-exam_date": "2026-09-15"})
    imp = db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )
    transition(imp, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    req = _export_request(client)  # the same requester
    for name in ("outbound", "outbound-bluelight"):
        Queue(name, connection=redis_conn()).empty()
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Standard", source=pacs,
                                       dest=dest, study_uids=[study_uid], user_id=None, actor="test")
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    SimpleWorker([Queue("outbound", connection=redis_conn())], connection=redis_conn()).work(burst=True)
    db.session.expire_all()
    done = db.session.get(Transfer, transfer.id)
    assert done.state == TransferState.DELIVERED.value, done.last_error
    assert remote.sop_uids(study_uid) == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    # Not an arrival, not claimed by the import request, nothing left on the gateway.
    assert db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study_uid)) is None
    assert db.session.get(Request, imp.id).status == Status.ACCEPTED
    assert not (service.gateway_store() / study_uid).exists()
    assert done.moving_study_uid == ""


# --- Imports are complete only when the desk has reason to know it (issue 8.3) -------------


def _import_request(client, login_as, exam_date: str) -> Request:
    from app.workflow.machine import transition

    login_as("requester")
    response = post_form(client, "/requests/new/import", {**valid_import(), "exams-0-exam_date": exam_date})
    req = db.session.scalar(
        sa.select(Request).where(Request.call_ref == response.headers["Location"].split("/")[2].split("?")[0])
    )
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    return req


def _desk(app, make_user, role: str = "analyst"):
    browser = app.test_client()
    user = make_user(role)
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return browser


def _flash_after(browser, response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)[:300]
    return browser.get(response.headers["Location"]).get_data(as_text=True)


def _run_inbound() -> None:
    from rq import Queue, SimpleWorker

    from app.extensions import redis_conn

    conn = redis_conn()
    queues = [Queue(n, connection=conn) for n in ("inbound-bluelight", "inbound")]
    SimpleWorker(queues, connection=conn).work(burst=True)


def test_a_push_cut_off_mid_study_is_not_downloaded_unless_the_analyst_sends_what_arrived(
    app, client, login_as, make_user, pas_patients, orthanc, gateway, tmp_path
):
    from pynetdicom import AE, StoragePresentationContexts
    from rq import Queue

    from app.extensions import redis_conn
    from app.transfers.models import RisEntry

    for name in ("inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    db.session.commit()
    req = _import_request(client, login_as, "2026-09-16")
    files = make_study(tmp_path / "nuh", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20260916", n_series=1, n_per_series=5, rows=16, cols=16)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    # The other hospital's sender stores three of five instances, then its connection dies.
    sender = AE(ae_title="NUHPACS")
    sender.requested_contexts = StoragePresentationContexts[:100]
    assoc = sender.associate("127.0.0.1", gateway.port, ae_title=OUR_AE)
    assert assoc.is_established
    for path in files[:3]:
        assert assoc.send_c_store(dcmread(path)).Status == 0x0000
    assoc.abort()
    analyst = _desk(app, make_user)
    wait_for(lambda: (s := db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study_uid)))
             and s.sender_done_at is not None, 10, "the gateway to see the connection end")
    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert "arriving: 3 instances so far; the sender&#39;s connection broke off" in page
    assert "Not ready to download to PACS" in page and ">Download to PACS</button>" not in page
    # Pressed anyway (an old page, a second tab): refused with the reason, nothing queued.
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    shown = _flash_after(analyst, analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token}))
    assert "Not downloaded to PACS" in shown and "connection broke off" in shown
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(Transfer.request_id == req.id)) == 0
    # The analyst chooses to send what has arrived: audited, and RIS and the e-mail say partial.
    _flash_after(analyst, analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token, "partial": "1"}))
    _run_inbound()
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id))
    assert transfer.state == TransferState.DELIVERED.value and transfer.partial_ok, transfer.last_error
    assert orthanc.sop_uids(study_uid) == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files[:3]}
    ris = db.session.scalar(sa.select(RisEntry).where(RisEntry.study_uid == study_uid))
    assert ris.partial and "may be incomplete" in ris.note
    mail = db.session.scalar(sa.select(OutboxEmail).where(OutboxEmail.request_id == req.id,
                                                          OutboxEmail.subject.contains("images delivered")))
    assert "Partial: the desk sent the 3 instances that had arrived" in mail.body
    from app.audit import AuditEvent

    assert db.session.scalar(sa.select(AuditEvent.id).where(AuditEvent.detail.contains("sending what has arrived")))
    # Delivered: not offered again, except as an explicit "send again".
    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert ">Download to PACS</button>" not in page and "Send to PACS again" in page
    shown = _flash_after(analyst, analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token}))
    assert "These images are on PACS already" in shown
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(Transfer.request_id == req.id)) == 1
@pytest.mark.slow


def test_a_pull_whose_remote_dies_mid_c_move_is_never_on_iep_and_cannot_be_downloaded(
    fault_app, app, client, login_as, make_user, pas_patients, orthanc, orthanc_factory, gateway, gateway_port,
    database_url, redis_url, tmp_path
):
    """The remote hospital's PACS dies in the middle of a C-MOVE to our gateway: what came
    is kept as "arriving", the request never says On IEP, Download to PACS is refused
    while the pull waits to retry and, once it gives up, because instances are known missing."""
    import threading

    from rq import Queue, SimpleWorker

    from app.extensions import redis_conn

    for name in ("inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    app.config["IEP_SETTINGS"].gateway_port = gateway_port
    app.config["IEP_SETTINGS"].dicom_timeout_seconds = 5
    dying = orthanc_factory(aet="DYINGPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)},
                            nodelay=False, extra={"SyncStorageArea": True})
    files = make_study(tmp_path / "nuh", patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date="20260917", n_series=1, n_per_series=150, rows=16, cols=16)
    assert scu.send_files(dying.node, files, config=QUICK).ok
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    remote = upsert_node("Dying PACS", dying.node.ae_title, "127.0.0.1", dying.node.port, "remote")
    remote.supports_get = False  # C-MOVE to our gateway
    db.session.commit()
    req = _import_request(client, login_as, "2026-09-17")
    pull = service.create_transfer(request=req, direction=Direction.PULL, priority="Standard", source=remote,
                                   dest=None, study_uids=[study_uid], user_id=None, actor="test")
    pull.max_attempts = 2
    db.session.commit()
    service.enqueue(pull, seen_job_id="")
    folder = service.gateway_store() / study_uid

    def kill_when_under_way() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if folder.is_dir() and len(list(folder.glob("*.dcm"))) >= 20:
                dying.proc.kill()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_under_way)
    killer.start()
    conn = redis_conn()
    SimpleWorker([Queue("inbound", connection=conn)], connection=conn).work(burst=True)
    killer.join()
    db.session.expire_all()
    pull = db.session.get(Transfer, pull.id)
    assert pull.state == TransferState.QUEUED.value and pull.attempts == 1, pull.last_error  # waits to retry
    arrived = len(list(folder.glob("*.dcm")))
    assert 20 <= arrived < 150
    assert db.session.get(Request, req.id).status != Status.ON_IEP
    analyst = _desk(app, make_user)
    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert f"arriving: {arrived} instances so far" in page
    assert f"transfer {pull.id} is still retrieving these images from Dying PACS (waiting to retry)" in page
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    shown = _flash_after(analyst, analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token}))
    assert "Not downloaded to PACS" in shown and "still retrieving" in shown
    # The pool runs the retry when it is due; it finds the remote gone and gives up: the
    # missing instances are known, and named.
    pool = start_pool(fault_app, database_url, redis_url, "inbound-bluelight,inbound=1", DICOM_TIMEOUT_SECONDS="5")
    try:
        pull = wait_for(lambda: (t := db.session.get(Transfer, pull.id)).state == TransferState.FAILED.value
                        and t, 60, "the pull to give up")
    finally:
        kill_pool(pool)
    assert pull.attempts == 2
    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert f"{150 - arrived} instances that Dying PACS listed never arrived (transfer {pull.id})" in page
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(
        Transfer.request_id == req.id, Transfer.direction == Direction.INBOUND.value)) == 0
    assert orthanc.sop_uids(study_uid) == set()


# --- Syntaxes through the engine (issue 8.5, 8.6) ----------------------------------------------


def _export_through_the_engine(client, login_as, source_peer, dest_peer, study_uid: str,
                               req: Request | None = None) -> Transfer:
    from rq import Queue, SimpleWorker

    from app.extensions import redis_conn

    source = upsert_node("UHLPACSWFM01", source_peer.node.ae_title, "127.0.0.1", source_peer.node.port, "local_pacs")
    dest = upsert_node(f"PACS {dest_peer.node.ae_title}", dest_peer.node.ae_title, "127.0.0.1", dest_peer.node.port,
                       "remote")
    req = req or _export_request(client, login_as)
    Queue("outbound", connection=redis_conn()).empty()
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority="Standard", source=source,
                                       dest=dest, study_uids=[study_uid], user_id=None, actor="test")
    transfer.max_attempts = 1
    db.session.commit()
    service.enqueue(transfer, seen_job_id="")
    SimpleWorker([Queue("outbound", connection=redis_conn())], connection=redis_conn()).work(burst=True)
    db.session.expire_all()
    return db.session.get(Transfer, transfer.id)


def test_an_export_keeps_each_instance_in_its_own_syntax_byte_for_byte(
    app, client, login_as, pas_patients, orthanc_factory, gateway_port, tmp_path
):
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

    from app.dicom.store_link import read_part10
    from tests.test_store_link import data_set_bytes
    from tests.test_syntaxes import plain_study, recode, stored_file, upload

    app.config["IEP_SETTINGS"].dicom_timeout_seconds = 10
    pacs_a = orthanc_factory(aet="SYNTAXA", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    pacs_b = orthanc_factory(aet="SYNTAXB", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    syntaxes = [JPEG2000Lossless, JPEGLSLossless, RLELossless, ExplicitVRLittleEndian]
    paths = plain_study(tmp_path / "src", len(syntaxes), patient_id="S1234567")
    for path, syntax in zip(paths, syntaxes, strict=True):
        upload(pacs_a, recode(path, syntax))
    done = _export_through_the_engine(client, login_as, pacs_a, pacs_b,
                                      str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID))
    assert done.state == TransferState.DELIVERED.value, done.last_error
    for original in paths:
        copy = tmp_path / f"b-{original.name}"
        copy.write_bytes(stored_file(pacs_b, read_part10(original).sop_uid))
        assert read_part10(copy).syntax == read_part10(original).syntax
        assert data_set_bytes(copy) == data_set_bytes(original), read_part10(original).syntax


# Orthanc 1.10: the list, and the older per-family switches (which it also reads) all off.
UNCOMPRESSED_ONLY = {
    "AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
    **{f"{family}TransferSyntaxAccepted": False
       for family in ("Deflated", "Jpeg", "Jpeg2000", "JpegLossless", "Jpip", "Mpeg2", "Rle", "Mpeg4", "H265")},
}


def test_a_pacs_that_takes_only_uncompressed_gets_converted_copies_or_nothing_at_all(
    app, client, login_as, pas_patients, orthanc_factory, gateway_port, make_user, tmp_path
):
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from app.dicom.store_link import read_part10
    from tests.test_syntaxes import plain_study, recode, stored_file, upload

    app.config["IEP_SETTINGS"].dicom_timeout_seconds = 10
    pacs_a = orthanc_factory(aet="SYNTAXC", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    plain_b = orthanc_factory(aet="PLAINB", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)},
                              extra=UNCOMPRESSED_ONLY)
    paths = plain_study(tmp_path / "src", 3, patient_id="S1234567")
    for path, syntax in zip(paths, [JPEG2000Lossless, JPEGLSLossless, RLELossless], strict=True):
        upload(pacs_a, recode(path, syntax))
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    done = _export_through_the_engine(client, login_as, pacs_a, plain_b, study_uid)
    assert done.state == TransferState.DELIVERED.value, done.last_error
    assert done.instances_confirmed == 3
    for original in paths:  # stored uncompressed, the same pixels
        at_b = tmp_path / f"at-b-{original.name}"
        at_b.write_bytes(stored_file(plain_b, read_part10(original).sop_uid))
        assert read_part10(at_b).syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
        assert (dcmread(at_b).pixel_array == dcmread(original).pixel_array).all()
    # A second study with a JPEG 2000 frame cut short: it cannot be decoded, so nothing of
    # that study is stored at all, and the widget says which instance and why. (The engine
    # runs with WeasyPrint loaded, which makes Pillow "decode" truncated images into garbage:
    # this once arrived at the PACS as an uncompressed image and was called Delivered.)
    good, corrupt = plain_study(tmp_path / "bad", 2, patient_id="S1234567", study_date="20240316")
    recode(corrupt, JPEG2000Lossless)
    ds = dcmread(corrupt)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(corrupt, enforce_file_format=True)
    upload(pacs_a, good)
    upload(pacs_a, corrupt)
    bad_study = str(dcmread(good, stop_before_pixels=True).StudyInstanceUID)
    failed = _export_through_the_engine(client, login_as, pacs_a, plain_b, bad_study, req=done.request)
    assert failed.state == TransferState.FAILED.value
    assert plain_b.sop_uids(bad_study) == set()  # not even the good one
    assert "nothing was sent" in failed.last_error
    am = _desk(app, make_user, "am_radiology")
    page = am.get(f"/transfers/{failed.id}").get_data(as_text=True)
    assert "1 instance did not make it" in page and f"<code>{read_part10(corrupt).sop_uid}</code>" in page
    assert "this instance cannot be decoded" in page
