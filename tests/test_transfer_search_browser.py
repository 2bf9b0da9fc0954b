"""The PACS search on an export's request page, in headless Chromium (issue 13.10): AM
radiology searches the PACS Orthanc; the results read as people read them (names "SMITH,
Margaret", dates dd/mm/yyyy), the request's exam lines stand beside them, and the study
the form names is ticked already while the other is not. A screenshot goes to
test-artifacts/ for a person to look at."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pydicom import dcmread

from app.dicom import scu
from app.dicom.synth import make_study
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind
from tests.browser_support import save_screenshot
from tests.dicom_peers import QUICK, OrthancPeer, gateway_port, orthanc_factory  # noqa: F401 - fixtures of `pacs`
from tests.test_browser import PASSWORD
from tests.test_cd_send import pacs  # noqa: F401 - the PACS Orthanc, registered as UHLPACSWFM01

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _sign_in(page: Page, live_url: str, email: str) -> None:
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def _export_request(requester, patient) -> str:
    """An export naming a CT head of 02/01/2026 (CHEAD)."""
    answers = {"s_number": patient.s_number, "nhs_number": patient.nhs_number, "family_name": "Smith",
               "given_name": "Margaret", "dob": patient.dob, "address_line1": "12 Welford Road",
               "postcode": "LE2 7AA", "contact_name": "Dr Shah", "contact_phone": "0116 258 4000",
               "contact_email": "shah@uhl-tr.nhs.uk", "priority": "Standard", "priority_reason": "MDT Referral",
               "institution_name": "Kettering General Hospital NHS Foundation Trust",
               "site_contact_name": "Dr Jane Rowe", "site_contact_position": "Consultant Radiologist",
               "site_contact_phone": "01536 492000", "site_contact_email": "jane.rowe@kgh.nhs.uk"}
    req = create_request(RequestValues(kind=Kind.EXPORT, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", "CHEAD"),)), requester)
    db.session.commit()
    return req.call_ref


def _stored(pacs: OrthancPeer, folder: Path, day: str, description: str, modality: str) -> str:  # noqa: F811
    files = make_study(folder, patient_id="S1234567", patient_name="SMITH^MARGARET", birth_date="19480314",
                       study_date=day, description=description, modality=modality, rows=16, cols=16,
                       accession=f"UHL-{description[:2]}")
    assert scu.send_files(pacs.node, files, config=QUICK).ok
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def test_pacs_results_read_as_people_read_them_and_the_named_study_is_ticked(
    page: Page, live_url, make_user, pas_patients, pacs: OrthancPeer, tmp_path: Path,  # noqa: F811
):
    head = _stored(pacs, tmp_path / "head", "20260102", "CT HEAD", "CT")
    knee = _stored(pacs, tmp_path / "knee", "20250310", "MR KNEE", "MR")
    call_ref = _export_request(make_user("requester"), pas_patients[0])
    am = make_user("am_radiology", password=PASSWORD)
    _sign_in(page, live_url, am.email)
    page.goto(f"{live_url}/requests/{call_ref}")
    panel = page.locator("#transfers")
    panel.get_by_label("Node").select_option(label="UHLPACSWFM01")
    panel.get_by_role("button", name="Search", exact=True).click()
    results = page.locator("#pacs-results table")
    expect(results).to_be_visible()
    head_row = results.locator("tr", has=page.locator(f'input[value="{head}"]'))
    knee_row = results.locator("tr", has=page.locator(f'input[value="{knee}"]'))
    expect(head_row).to_contain_text("SMITH, Margaret (S1234567, born 14/03/1948)")
    expect(head_row).to_contain_text("02/01/2026")
    expect(knee_row).to_contain_text("10/03/2025")
    expect(results).not_to_contain_text("SMITH^MARGARET")
    expect(results).not_to_contain_text("20260102")
    # The exam line's study is ticked in advance, and says why; the other is not.
    expect(head_row.get_by_role("checkbox")).to_be_checked()
    expect(head_row).to_contain_text("02/01/2026 CT head (same date and body part)")
    expect(knee_row.get_by_role("checkbox")).not_to_be_checked()
    lines = page.locator(".exam-lines")
    expect(lines).to_contain_text("02/01/2026 CT head CHEAD")
    expect(lines).to_contain_text("✓ Ticked: 02/01/2026 CT HEAD")
    expect(page.locator("#pacs-search-status")).to_have_text(
        "2 studies found; 1 matching the request's examinations, ticked.")
    save_screenshot(page, "transfer_search_results_beside_exam_lines")
    # A refused Send is said beside the button; what the analyst ticked and typed stays.
    head_row.get_by_role("checkbox").uncheck()
    page.get_by_label("Report text (optional)").fill("CT head: no acute abnormality.")
    page.get_by_role("button", name="Send and create transaction").click()
    expect(page.locator("#send-refusal")).to_have_text("Tick at least one study to send.")
    expect(page.get_by_label("Report text (optional)")).to_have_value("CT head: no acute abnormality.")
    expect(head_row.get_by_role("checkbox")).not_to_be_checked()
    knee_row.get_by_role("checkbox").check()
    page.get_by_role("button", name="Send and create transaction").click()
    expect(page.locator("#send-refusal")).to_have_text("Choose the destination node.")  # none is registered
    expect(knee_row.get_by_role("checkbox")).to_be_checked()
    expect(page.get_by_label("Report text (optional)")).to_have_value("CT head: no acute abnormality.")
    assert page.url.endswith(f"/requests/{call_ref}")  # the same page, not a reload
