"""A CD's studies from the scan to PACS (issue 12.2, 12.4, 12.6): the worker pool
(`worker.py`) scans what was uploaded, the desk sees each patient on the CD beside the PAS
register, ticks studies and sends them; the inbound lane fixes them up, stores them to
the PACS Orthanc, verifies them, writes RIS entries and says Delivered. A patient who
differs stops the send; a lost scan is run again; the contents are purged after 15 days.
Real Redis, real Orthanc, real worker processes."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from rq import Queue

from app.audit import AuditEvent
from app.cds import jobs as cd_jobs
from app.cds import storage
from app.cds.models import CdFile, CdUpload, CdUploadState
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.timeutil import utcnow
from app.transfers.cli import upsert_node
from app.transfers.models import RisEntry, Transfer, TransferState
from app.workflow.mail import OutboxEmail
from tests.conftest import post_form
from tests.dicom_peers import OUR_AE, OrthancPeer, gateway_port, orthanc, orthanc_factory  # noqa: F401 - fixtures
from tests.forms_data import valid_cd
from tests.pool import kill_pool, start_pool, wait_for

INBOUND_LANES = "inbound-bluelight,inbound=1"
# SMITH's two studies on the CD (the second one the form names), and PATEL's one.
HEAD, SPINE = ("20260301", "CT HEAD", "CDACC1"), ("20260915", "MR LUMBAR SPINE", "CDACC2")


def _cd_request(client, login_as, exam_date: str = "", *, sign_in: bool = True) -> Request:
    if sign_in:
        login_as("requester")
    data = valid_cd()
    if exam_date:
        data["exams-0-exam_date"] = exam_date
    response = post_form(client, "/requests/new/cd", data)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def _desk(app, make_user, role: str = "analyst"):
    browser = app.test_client()
    user = make_user(role)
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return browser


def _study(folder: Path, day: str, description: str, accession: str, *, name: str = "SMITH^MARGARET",
           patient_id: str = "RX12345", birth: str = "19480314", per_series: int = 3) -> list[Path]:
    return make_study(folder, patient_id=patient_id, patient_name=name, birth_date=birth, study_date=day,
                      description=description, accession=accession, n_series=2, n_per_series=per_series,
                      rows=16, cols=16)


def _uploaded(req: Request, files: dict[str, Path], user_id: int | None = None) -> CdUpload:
    """A CD whose every file has arrived (what the upload routes leave behind), SCANNING."""
    upload = CdUpload(request_id=req.id, created_by_id=user_id, files_expected=len(files),
                      state=CdUploadState.SCANNING, completed_at=utcnow())
    db.session.add(upload)
    db.session.flush()
    total = 0
    for relpath, source in files.items():
        size = source.stat().st_size
        row = CdFile(upload_id=upload.id, relpath=relpath, size=size, received=size)
        db.session.add(row)
        db.session.flush()
        target = storage.file_path(upload.id, row.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        total += size
    upload.bytes_expected = upload.bytes_received = total
    db.session.commit()
    return upload


def _on_cd(*studies: list[Path]) -> dict[str, Path]:
    return {f"DICOM/S{n}/I{m}": path for n, files in enumerate(studies) for m, path in enumerate(files)}


def _uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def pacs(app, orthanc_factory, gateway_port):  # noqa: F811 - the fixtures imported above
    for name in ("inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    # It knows the desk's AE title: the verification after sending is a C-FIND.
    peer = orthanc_factory(aet="UHLPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    upsert_node("UHLPACSWFM01", peer.node.ae_title, "127.0.0.1", peer.node.port, "local_pacs")
    db.session.commit()
    return peer


def _token(page: str) -> str:
    return page.split('name="csrf_token" value="')[1].split('"')[0]


def test_a_scanned_cd_goes_to_pacs_through_the_pool_with_the_import_fix_up_ris_and_email(
    app, client, login_as, make_user, pas_patients, pacs: OrthancPeer, database_url, redis_url, tmp_path
):
    req = _cd_request(client, login_as, exam_date="2026-09-15")
    head = _study(tmp_path / "head", *HEAD)
    spine = _study(tmp_path / "spine", *SPINE)
    upload = _uploaded(req, _on_cd(head, spine) | {"README.TXT": _text(tmp_path / "readme.txt")})
    assert cd_jobs.queue_scan(upload)
    analyst = _desk(app, make_user)
    pool = start_pool(app, database_url, redis_url, INBOUND_LANES)
    try:
        wait_for(lambda: db.session.get(CdUpload, upload.id).state == CdUploadState.SCANNED, 60, "the scan")
        assert db.session.get(Request, req.id).status == Status.UPLOADED
        page = analyst.get(f"/requests/{req.call_ref}/cd-upload/{upload.id}/scan").get_data(as_text=True)
        assert "SMITH, Margaret" in page and "matches the PAS register" in page
        assert "15/09/2026" in page and "MR LUMBAR SPINE" in page and "CT HEAD" in page
        assert "README.TXT" in page and "not a DICOM file" in page
        # The form names 15/09/2026 only: that study is ticked, the other is not.
        assert f'value="{_uid(spine)}" checked' in page and f'value="{_uid(head)}" checked' not in page
        response = analyst.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                                data={"csrf_token": _token(page), "study_uid": [_uid(spine), _uid(head)]})
        assert response.status_code == 302, response.get_data(as_text=True)[:400]
        transfer = wait_for(lambda: db.session.scalar(sa.select(Transfer).where(
            Transfer.request_id == req.id, Transfer.state == TransferState.DELIVERED)), 90, "the transfer to deliver")
    finally:
        kill_pool(pool)
    for files in (head, spine):
        uid = _uid(files)
        assert pacs.sop_uids(uid) == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    stored = pacs.rest(f"/studies/{pacs.rest('/studies')[0]}")
    assert stored["PatientMainDicomTags"]["PatientID"] == "S1234567"  # fixed up, as an import
    assert transfer.instances_confirmed == len(head) + len(spine)
    ris = {r.study_uid: r for r in db.session.scalars(sa.select(RisEntry).where(RisEntry.request_id == req.id))}
    assert {r.event_date.isoformat() for r in ris.values()} == {"2026-03-01", "2026-09-15"}
    assert db.session.get(Request, req.id).status == Status.DELIVERED
    assert db.session.scalar(sa.select(OutboxEmail).where(OutboxEmail.request_id == req.id,
                                                          OutboxEmail.subject.contains("images delivered")))
    assert cd_jobs.settle_sent() == 1
    assert db.session.get(CdUpload, upload.id).state == CdUploadState.SENT
    details = list(db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.request_id == req.id)))
    assert any("scanned: 1 patient(s), 2 study(ies), 12 instance(s), 1 problem(s)" in d for d in details)
    assert any("CD upload" in d and "2 study(ies) to PACS" in d for d in details)


def _text(path: Path) -> Path:
    path.write_text("Autorun stuff\n")
    return path


def _scan_here(upload: CdUpload) -> None:
    """Run the queued scan in this process (the pool's path is proven above)."""
    from rq import SimpleWorker

    conn = redis_conn()
    SimpleWorker([Queue("inbound", connection=conn)], connection=conn).work(burst=True)
    db.session.expire_all()
    assert db.session.get(CdUpload, upload.id).state == CdUploadState.SCANNED


def test_another_patient_on_the_cd_is_shown_side_by_side_and_stops_the_send(
    app, client, login_as, make_user, pas_patients, pacs, tmp_path
):
    req = _cd_request(client, login_as, exam_date="2026-03-01")
    smith = _study(tmp_path / "smith", *HEAD)
    patel = _study(tmp_path / "patel", "20260501", "XR CHEST", "CDACC9", name="PATEL^RAVI", patient_id="P99",
                   birth="19751102")
    upload = _uploaded(req, _on_cd(smith, patel))
    cd_jobs.queue_scan(upload)
    _scan_here(upload)
    analyst = _desk(app, make_user)
    page = analyst.get(f"/requests/{req.call_ref}/cd-upload/{upload.id}/scan").get_data(as_text=True)
    assert "PATEL, Ravi" in page and "differs from the PAS register" in page
    assert "02/11/1975" in page and "14/03/1948" in page  # side by side: the CD's and the register's
    # The form names the head CT's date: SMITH's is ticked; PATEL's is not (nor would it be by date).
    assert f'value="{_uid(smith)}" checked' in page and f'value="{_uid(patel)}" checked' not in page
    response = analyst.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                            data={"csrf_token": _token(page), "study_uid": [_uid(smith), _uid(patel)]})
    shown = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "differ from the PAS register" in shown
    assert f'value="{_uid(patel)}" checked' in shown  # the analyst's ticks kept
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(Transfer.request_id == req.id)) == 0
    assert db.session.get(CdUpload, upload.id).state == CdUploadState.SCANNED


def test_a_different_date_of_birth_stops_until_the_analyst_confirms_and_is_audited(
    app, client, login_as, make_user, pas_patients, pacs, tmp_path
):
    req = _cd_request(client, login_as)
    smith = _study(tmp_path / "smith", *HEAD, birth="19480315")
    upload = _uploaded(req, _on_cd(smith))
    cd_jobs.queue_scan(upload)
    _scan_here(upload)
    analyst = _desk(app, make_user)
    page = analyst.get(f"/requests/{req.call_ref}/cd-upload/{upload.id}/scan").get_data(as_text=True)
    assert "15/03/1948" in page and "differs from the PAS register" in page
    assert f'value="{_uid(smith)}" checked' not in page
    refused = analyst.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                           data={"csrf_token": _token(page), "study_uid": _uid(smith)})
    assert refused.status_code == 422
    sent = analyst.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                        data={"csrf_token": _token(page), "study_uid": _uid(smith), "confirm_patient": "1"})
    assert sent.status_code == 302
    db.session.expire_all()
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id))
    assert transfer.mismatch_accepted and transfer.state == TransferState.QUEUED
    assert db.session.get(CdUpload, upload.id).state == CdUploadState.SENDING
    assert db.session.scalar(sa.select(AuditEvent.id).where(
        AuditEvent.request_id == req.id, AuditEvent.detail.contains("analyst confirmed the patient")))
    # A second press sends nothing more.
    again = analyst.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                         data={"csrf_token": _token(page), "study_uid": _uid(smith), "confirm_patient": "1"})
    assert "already on their way to PACS" in again.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(Transfer.request_id == req.id)) == 1


def test_only_the_desk_sends_and_nobody_else_sees_the_scan(app, client, login_as, make_user, pas_patients, pacs,
                                                           tmp_path):
    req = _cd_request(client, login_as)  # signed in as its requester
    smith = _study(tmp_path / "smith", *HEAD)
    upload = _uploaded(req, _on_cd(smith))
    cd_jobs.queue_scan(upload)
    _scan_here(upload)
    page = client.get(f"/requests/{req.call_ref}/cd-upload/{upload.id}/scan").get_data(as_text=True)
    assert "CT HEAD" in page and "Send the ticked studies" not in page  # the requester sees, cannot send
    # A valid token (from the CD form), so that it is the role that refuses, not the CSRF check.
    token = _token(client.get("/requests/new/cd").get_data(as_text=True))
    refused = client.post(f"/requests/{req.call_ref}/cd-upload/{upload.id}/send",
                          data={"csrf_token": token, "study_uid": _uid(smith)})
    assert refused.status_code == 403
    stranger = _desk(app, make_user, "requester")
    assert stranger.get(f"/requests/{req.call_ref}/cd-upload/{upload.id}/scan").status_code == 403
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id)).where(Transfer.request_id == req.id)) == 0


def test_a_scan_whose_job_was_lost_is_queued_again_and_the_pool_finishes_it(
    app, client, login_as, pas_patients, database_url, redis_url, tmp_path
):
    for name in ("inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    req = _cd_request(client, login_as)
    upload = _uploaded(req, _on_cd(_study(tmp_path / "smith", *HEAD)))
    # Never queued (Redis was down when the last file arrived), and quiet for a while.
    upload.updated_at = upload.completed_at = utcnow() - timedelta(minutes=10)
    db.session.commit()
    assert cd_jobs.requeue_scans() == 1
    assert cd_jobs.requeue_scans() == 0  # queued once, not twice
    pool = start_pool(app, database_url, redis_url, INBOUND_LANES)
    try:
        wait_for(lambda: db.session.get(CdUpload, upload.id).state == CdUploadState.SCANNED, 60, "the scan")
    finally:
        kill_pool(pool)


def test_cd_contents_are_purged_15_days_after_delivery_and_kept_while_the_cd_is_worked(
    app, client, login_as, pas_patients, tmp_path
):
    req = _cd_request(client, login_as)
    other = _cd_request(client, login_as, "2026-01-02", sign_in=False)
    sent = _uploaded(req, _on_cd(_study(tmp_path / "a", *HEAD)))
    transfer = Transfer(request_id=req.id, direction="inbound", priority="Standard", state=TransferState.DELIVERED,
                        finished_at=utcnow() - timedelta(days=16), study_key="x")
    db.session.add(transfer)
    db.session.flush()
    sent.transfer_id, sent.state = transfer.id, CdUploadState.SENT
    worked = _uploaded(other, _on_cd(_study(tmp_path / "b", *SPINE)))
    worked.state, worked.updated_at = CdUploadState.SCANNED, utcnow() - timedelta(days=20)
    db.session.commit()
    assert cd_jobs.purge_cds() == 1
    db.session.expire_all()
    gone, kept = db.session.get(CdUpload, sent.id), db.session.get(CdUpload, worked.id)
    assert gone.state == CdUploadState.PURGED and "delivered to PACS 15 days ago" in gone.purge_reason
    assert not storage.upload_dir(sent.id).exists()
    assert kept.state == CdUploadState.SCANNED and storage.upload_dir(worked.id).exists()
    assert db.session.scalar(sa.select(AuditEvent.id).where(AuditEvent.action == "purge",
                                                            AuditEvent.request_id == req.id))
