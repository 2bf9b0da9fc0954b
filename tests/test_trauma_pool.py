"""The trauma route end to end (issue 10): a radiologist in headless Chromium sends two
of a patient's three studies with a pasted report to NUH, through the real worker pool
(worker.py), while the four general outbound workers are busy and hundreds of standard
exports wait; and the same with NUH down. Real Redis, real Orthancs for the local PACS,
NUH and a slow PACS that keeps the general workers busy."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect
from pydicom import dcmread
from rq import Queue

from app.dicom import scu
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers import service
from app.transfers.cli import upsert_node
from app.transfers.models import Direction, Transfer, TransferState
from app.transfers.report import ENCAPSULATED_PDF
from tests.conftest import post_form
from tests.dicom_peers import OUR_AE, QUICK, free_port
from tests.pool import kill_pool, start_pool, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "correct-horse-9"
GENERAL_LANES = "outbound-bluelight=1;outbound-bluelight,outbound,outbound-batch=4"
BACKLOG = 300  # standard exports waiting behind the four busy ones
REPORT = "CT head: no acute intracranial haemorrhage.\nImpression: <no fracture> & no collection."
# SMITH's three studies on the local PACS: (date, description, accession, series x instances).
STUDIES = [
    ("20261203", "CT HEAD", "ACC1001", (2, 12)),
    ("20261204", "CT CHEST ABDOMEN PELVIS", "ACC1002", (3, 10)),
    ("20250610", "XR CHEST", "ACC0900", (1, 2)),
]


@pytest.fixture
def world(app, orthanc_factory, gateway_port, tmp_path, pas_patients):
    """A fresh local PACS with SMITH's three studies, registered; the queues empty."""
    for name in ("outbound-bluelight", "outbound", "outbound-batch"):
        Queue(name, connection=redis_conn()).empty()
    settings = app.config["IEP_SETTINGS"]
    settings.dicom_timeout_seconds = 10
    pacs = orthanc_factory(aet="UHLPACS", modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})
    uids: dict[str, str] = {}
    for n, (day, description, accession, (series, per_series)) in enumerate(STUDIES):
        files = make_study(tmp_path / f"study{n}", patient_id="S1234567", patient_name="SMITH^MARGARET",
                           birth_date="19480314", study_date=day, description=description, accession=accession,
                           n_series=series, n_per_series=per_series, rows=64, cols=64)
        assert scu.send_files(pacs.node, files, config=QUICK).ok
        uids[description] = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node = upsert_node("UHLPACSWFM01", pacs.node.ae_title, "127.0.0.1", pacs.node.port, "local_pacs")
    db.session.commit()
    return pacs, node, uids


def radiologist_sends(page: Page, live_url: str, email: str) -> str:
    """Appendix 4 in the browser: sign in, find SMITH, check, tick CT HEAD and the CT CAP,
    paste the report, check it, send. Returns the call reference the tracker shows."""
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_url}/trauma")
    page.get_by_label("Patient ID (RWES / S number)").fill("S1234567")
    page.get_by_label("NHS number", exact=True).fill("999 000 0018")
    page.get_by_role("button", name="Find the patient").click()
    expect(page.locator(".patient-name")).to_have_text("SMITH, Margaret")
    page.get_by_role("button", name="Yes, this is the patient: show the studies").click()
    rows = page.locator("#trauma-studies tbody tr")
    expect(rows).to_have_count(3)
    page.get_by_label("Send CT HEAD, 03/12/2026").check()
    page.get_by_label("Send CT CHEST ABDOMEN PELVIS, 04/12/2026").check()
    page.get_by_label("Report (optional)").fill(REPORT)
    page.get_by_role("button", name="Check and send").click()
    expect(page.locator(".report-check")).to_have_text(REPORT)
    page.get_by_role("radio", name="CT HEAD, 03/12/2026").check()  # the report is about the head
    page.get_by_label("I have read the report above").check()
    page.get_by_role("button", name="Send to Nottingham now").click()
    expect(page).to_have_url(re.compile(rf"{live_url}/trauma/IEP-\d{{4}}-\d{{6}}$"))
    return page.url.rsplit("/", 1)[1]


def test_a_trauma_transfer_reaches_nuh_whole_while_general_workers_are_busy_and_exports_wait(
    app, world, page, live_url, make_user, orthanc_factory, database_url, redis_url, tmp_path
):
    pacs, pacs_node, uids = world
    nuh = orthanc_factory(aet="NUHPACS", modalities={"desk": (OUR_AE, "127.0.0.1", free_port())})
    upsert_node("NUH Radiology PACS", nuh.node.ae_title, "127.0.0.1", nuh.node.port, "remote",
                "Nottingham University Hospitals NHS Trust")
    # The load: four long standard exports to a slow PACS hold the four general workers,
    # and BACKLOG more wait behind them on the outbound queue.
    slow_pacs = orthanc_factory(aet="SLOWPACS", nodelay=False, extra={"SyncStorageArea": True})
    slow = upsert_node("Slow PACS", slow_pacs.node.ae_title, "127.0.0.1", slow_pacs.node.port, "remote")
    big = make_study(tmp_path / "big", patient_id="S7654321", patient_name="PATEL^RAVI", birth_date="19751102",
                     study_date="20261001", n_per_series=200, rows=64, cols=64)
    assert scu.send_files(pacs.node, big, config=QUICK).ok
    big_uid = str(dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
    waiting = [service.create_transfer(request=None, direction=Direction.OUTBOUND, priority="Standard",
                                       source=pacs_node, dest=slow, study_uids=[big_uid], user_id=None)
               for _ in range(4 + BACKLOG)]
    db.session.commit()
    for transfer in waiting:
        service.enqueue(transfer, seen_job_id="")
    busy = waiting[:4]
    radiologist = make_user("radiologist", password=PASSWORD)
    pool = start_pool(app, database_url, redis_url, GENERAL_LANES)
    try:
        wait_for(lambda: all(db.session.get(Transfer, t.id).state == TransferState.RUNNING for t in busy), 60,
                 "the four general workers to be busy")
        call_ref = radiologist_sends(page, live_url, radiologist.email)
        expect(page.get_by_role("heading", name="On NUH PACS – the receiving trust now downloads it")).to_be_visible(
            timeout=90_000)
        # Still under load when it arrived: the general workers busy, the exports waiting.
        db.session.expire_all()
        assert all(db.session.get(Transfer, t.id).state == TransferState.RUNNING for t in busy)
        assert Queue("outbound", connection=redis_conn()).count >= BACKLOG - 5
    finally:
        kill_pool(pool)
    # Instance for instance: each ticked study whole, plus the report in the study it is
    # about (CT HEAD, as chosen); the third study not sent.
    head, cap = uids["CT HEAD"], uids["CT CHEST ABDOMEN PELVIS"]
    assert nuh.sop_uids(cap) == pacs.sop_uids(cap) and len(pacs.sop_uids(cap)) == 30
    extra = nuh.sop_uids(head) - pacs.sop_uids(head)
    assert pacs.sop_uids(head) <= nuh.sop_uids(head) and len(extra) == 1
    (report_uid,) = extra
    (hit,) = nuh.rest_post("/tools/lookup", report_uid)
    tags = nuh.rest(f"/instances/{hit['ID']}/simplified-tags")
    assert tags["SOPClassUID"] == ENCAPSULATED_PDF and tags["PatientID"] == "S1234567"
    assert nuh.sop_uids(uids["XR CHEST"]) == set()
    assert nuh.count_instances() == 24 + 30 + 1
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    assert req.status == Status.DELIVERED
    # What the page says is what NUH holds.
    text = page.locator("#trauma-status").inner_text()
    assert "Request status: Delivered" in text
    assert "55 instances" in text and "All 25 instances" in text and "All 30 instances" in text


def test_with_nuh_down_the_page_says_so_and_says_burn_a_disk_and_the_desk_sees_it(
    app, world, page, live_url, make_user, client, login_as, database_url, redis_url
):
    _pacs, _node, _uids = world
    # Nothing listens at NUH's address; three attempts (5 s and 20 s apart), then Failed.
    upsert_node("NUH Radiology PACS", "NUHPACS", "127.0.0.1", free_port(), "remote",
                "Nottingham University Hospitals NHS Trust")
    db.session.commit()
    app.config["IEP_SETTINGS"].transfer_max_attempts = 3
    radiologist = make_user("radiologist", password=PASSWORD)
    pool = start_pool(app, database_url, redis_url, "outbound-bluelight=1")
    try:
        call_ref = radiologist_sends(page, live_url, radiologist.email)
        status = page.locator("#trauma-status")
        # At the first failed attempt, at once: not delivered, why, and burn a disk.
        expect(status).to_have_attribute("data-outcome", "failing", timeout=30_000)
        expect(status.get_by_role("heading", name="Not delivered yet: the last attempt failed")).to_be_visible()
        expect(status).to_contain_text("If the images are needed now, burn a disk")
        expect(status).to_contain_text("Sending to NUH Radiology PACS failed: connection refused")
        expect(status).to_contain_text("(attempt 1 of 3)")
        # The desk sees it now, while it retries, not only once it has failed.
        login_as("analyst")
        action = post_form(client, "/desk", {"tab_choice": "action"}, headers={"HX-Request": "true"})
        assert f'id="row-{call_ref}"' in action.get_data(as_text=True)
        assert db.session.get(Request, db.session.scalar(
            sa.select(Request.id).where(Request.call_ref == call_ref))).status != Status.FAILED
        # Then the last attempt fails: the page stops following it and names what did not go.
        expect(status).to_have_attribute("data-outcome", "failed", timeout=60_000)
        expect(status.get_by_role("heading", name="Not delivered: the transfer to NUH failed")).to_be_visible()
        expect(status).to_contain_text("Request status: Failed")
        expect(status).to_contain_text("The service desk has it in Action Required")
        expect(status.locator("tr.not-arrived")).to_have_count(2)
    finally:
        kill_pool(pool)
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    assert req.status == Status.FAILED
    queue = post_form(client, "/desk", {"tab_choice": "action"}, headers={"HX-Request": "true"})
    assert f'id="row-{call_ref}"' in queue.get_data(as_text=True)


def test_the_screen_goes_from_the_s_number_to_the_study_list_with_the_keyboard(app, world, page, live_url,
                                                                               make_user):
    """At 3 a.m., hands on the keyboard: the S number has the focus, Enter finds the
    patient, the Yes button has the focus, Enter lists the studies, the first box has it."""
    upsert_node("NUH Radiology PACS", "NUHPACS", "127.0.0.1", free_port(), "remote",
                "Nottingham University Hospitals NHS Trust")
    db.session.commit()
    radiologist = make_user("radiologist", password=PASSWORD)
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(radiologist.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_label("Patient ID (RWES / S number)")).to_be_focused()
    page.keyboard.type("S1234567")
    page.keyboard.press("Tab")
    page.keyboard.type("9990000018")
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Yes, this is the patient: show the studies")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Send CT CHEST ABDOMEN PELVIS, 04/12/2026")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_label("Send CT CHEST ABDOMEN PELVIS, 04/12/2026")).to_be_checked()
