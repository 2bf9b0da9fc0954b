"""A CD from the Radiology Reception to PACS, in headless Chromium through the real worker
pool (issue 12, "How it is checked"): the desk marks the CD collected by typing its label's
code into the collection page; the requester uploads the CD's folder (the progress bar
moving) and sees what the pool's scan found; an analyst sends the studies; they arrive in
the PACS Orthanc with the S number. On a failure the page is saved to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect
from pydicom import dcmread

from app.cds.models import CdUpload, CdUploadState
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.transfers.models import Transfer, TransferState
from tests.browser_support import open_page, save_screenshot
from tests.cds import Patient, StudySpec, datasets, write_fileset
from tests.dicom_peers import gateway_port, orthanc_factory  # noqa: F401 - fixtures of `pacs`
from tests.pool import kill_pool, start_pool, wait_for
from tests.test_browser import PASSWORD
from tests.test_cd_send import pacs  # noqa: F401 - the PACS Orthanc, registered

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SMITH = Patient(name="SMITH^MARGARET", id="RX12345", birth_date="19480314")
STUDIES = [StudySpec(series=[("CT", 4), ("CT", 3)], date="20240101", accession="CDA1", patient=SMITH),
           StudySpec(series=[("MR", 5)], date="20240301", accession="CDA2", patient=SMITH)]


@pytest.fixture
def pages(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[], Page]]:
    """open() -> a page of its own (one person each); screenshots of all when the test failed."""
    opened: list[Page] = []
    failures_before = request.session.testsfailed

    def open_one() -> Page:
        opened.append(open_page(browser))
        return opened[-1]

    yield open_one
    for page in opened:
        if request.session.testsfailed > failures_before:
            print("screenshot:", save_screenshot(page, request.node.name))
        page.context.close()


def _sign_in(page: Page, live_url: str, email: str) -> None:
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def _cd_request(requester, patient) -> str:
    """The requester's CD request (Appendix 6), naming the head CT's date."""
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "address_line1": "12 Welford Road", "postcode": "LE2 7AA", "contact_name": "Dr Shah",
               "contact_phone": "0116 258 4000", "contact_email": "shah@uhl-tr.nhs.uk", "priority": "Standard",
               "cd_count": 1, "drop_off_site": "LRI", "internal_post_address": "Ward 7"}
    req = create_request(RequestValues(kind=Kind.CD, patient=patient, answers=answers,
                                       exams=((date(2024, 1, 1), "CT head (Spire)", ""),)), requester)
    db.session.commit()
    return req.call_ref


def test_a_cd_goes_from_the_reception_to_pacs_in_the_browser(
    app, pages, live_url, make_user, pas_patients, pacs, database_url, redis_url, tmp_path: Path
):
    cd = write_fileset(tmp_path / "CD", datasets(STUDIES, size=64))
    instances = {p for p in cd.rglob("*") if p.is_file() and p.name != "DICOMDIR"}
    requester, analyst = make_user("requester", password=PASSWORD), make_user("analyst", password=PASSWORD)
    call_ref = _cd_request(requester, pas_patients[0])
    assert db.session.get(Request, _request_id(call_ref)).status == Status.AWAITING_DROP_OFF
    # Wednesday's round: the desk scans the envelope's label at the collection page.
    desk = pages()
    _sign_in(desk, live_url, analyst.email)
    desk.goto(f"{live_url}/desk/cds/collect")
    expect(desk.locator("#code")).to_be_focused()
    desk.keyboard.type(call_ref)  # a barcode scanner is a keyboard: the code, then Enter
    desk.keyboard.press("Enter")
    expect(desk.locator(f"#collected-{call_ref}")).to_be_visible()
    assert db.session.get(Request, _request_id(call_ref)).status == Status.COLLECTED
    mine = pages()
    _sign_in(mine, live_url, requester.email)
    pool = start_pool(app, database_url, redis_url, "inbound-bluelight,inbound=1")
    try:
        # The requester uploads the CD's folder and watches the progress count up.
        mine.goto(f"{live_url}/requests/{call_ref}")
        mine.evaluate("""() => { window.seenProgress = [];
            new MutationObserver(() => { const t = document.getElementById('cd-progress-text');
              if (t) { window.seenProgress.push(t.textContent); } })
            .observe(document.getElementById('cd-progress'),
                     {subtree: true, childList: true, characterData: true}); }""")
        mine.get_by_label("Choose the CD's folder").set_input_files(str(cd))
        total = len(instances) + 1  # and the DICOMDIR
        expect(mine.locator("#cd-progress")).to_contain_text(f"All {total} files received", timeout=30_000)
        counts = [int(m.group(1)) for t in mine.evaluate("() => window.seenProgress")
                  if (m := re.match(rf"(\d+) of {total} files", t))]
        assert len(set(counts)) > 3 and counts == sorted(counts), counts
        # The pool scans it; the page shows what is on the CD without a reload.
        scan = mine.locator("#cd-scan")
        expect(scan).to_contain_text("Scanned 13 files (from the CD's DICOMDIR)", timeout=60_000)
        expect(scan).to_contain_text("SMITH, Margaret")
        expect(scan).to_contain_text("matches the PAS register")
        expect(scan.locator("tbody tr").filter(has_text="01/01/2024")).to_contain_text("CDA1")
        expect(scan).not_to_contain_text("Send the ticked studies")  # a requester does not send
        assert db.session.get(Request, _request_id(call_ref)).status == Status.UPLOADED

        # The analyst ticks the second study too, confirms, and sends.
        desk.goto(f"{live_url}/requests/{call_ref}")
        head = desk.get_by_label("Send the study of 01/01/2024")
        expect(head).to_be_checked()  # the date the form names
        spine = desk.get_by_label("Send the study of 01/03/2024")
        expect(spine).not_to_be_checked()
        spine.check()
        desk.once("dialog", lambda dialog: dialog.accept())
        desk.get_by_role("button", name="Send the ticked studies to PACS").click()
        expect(desk.get_by_text("Sending 2 studies from the CD to PACS: queued.")).to_be_visible()
        transfer = wait_for(lambda: db.session.scalar(sa.select(Transfer).where(
            Transfer.request_id == _request_id(call_ref), Transfer.state == TransferState.DELIVERED)), 90,
            "the CD's studies on PACS")
    finally:
        kill_pool(pool)
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in instances}
    on_pacs = {sop for study in STUDIES for sop in pacs.sop_uids(study.uid)}
    assert on_pacs == sent and transfer.instances_confirmed == len(sent)
    for study_id in pacs.rest("/studies"):
        assert pacs.rest(f"/studies/{study_id}")["PatientMainDicomTags"]["PatientID"] == "S1234567"
    assert db.session.get(Request, _request_id(call_ref)).status == Status.DELIVERED
    desk.reload()
    expect(desk.locator(".summary .badge").first).to_have_text("Delivered")
    assert db.session.scalar(sa.select(CdUpload.state).where(CdUpload.request_id == _request_id(call_ref))) in (
        CdUploadState.SENDING, CdUploadState.SENT)


def _request_id(call_ref: str) -> int:
    db.session.expire_all()
    return int(db.session.scalar(sa.select(Request.id).where(Request.call_ref == call_ref)))
