"""The collection page in headless Chromium (issue 12.5): a barcode scanner types the CD
label's call reference into the focused field and ends with Enter; the CD shows as
collected in today's list, without a page load, and the field is focused again, empty,
for the next CD. On a failure the page is saved to test-artifacts/.
"""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from tests.test_browser import PASSWORD

pytestmark = pytest.mark.browser


@pytest.fixture
def cds(app, make_user, pas_patients) -> list[str]:
    """Two CD imports waiting for drop-off at the LRI (call references)."""
    requester = make_user("requester")
    refs = []
    for patient in pas_patients[:2]:
        answers = {"s_number": patient.s_number, "family_name": patient.family_name.title(),
                   "given_name": patient.given_name, "dob": patient.dob, "contact_name": "Dr Shah",
                   "internal_post_address": "Ward 7", "cd_count": 2, "drop_off_site": "LRI"}
        req = create_request(RequestValues(kind=Kind.CD, patient=patient, answers=answers,
                                           exams=((date(2026, 1, 2), "MRI knee (Spire)", ""),)), requester)
        refs.append(req.call_ref)
    db.session.commit()
    return refs


def _status(call_ref: str) -> Status:
    db.session.expire_all()
    return db.session.scalar(sa.select(Request.status).where(Request.call_ref == call_ref))


def test_scanning_a_label_marks_the_cd_collected_and_keeps_focus_for_the_next(page, live_url, make_user, cds):
    _sign_in(page, live_url, make_user("analyst", password=PASSWORD).email)
    page.goto(f"{live_url}/desk/cds/collect")
    page.evaluate("window.__marker = 'same page'")
    field = page.locator("#code")
    expect(field).to_be_focused()  # autofocus: the scanner types straight in
    for number, call_ref in enumerate(cds, start=1):
        # A scanner is a keyboard: the code's characters, then Enter.
        page.keyboard.type(call_ref)
        page.keyboard.press("Enter")
        expect(page.locator(f"#collected-{call_ref}")).to_be_visible()
        expect(page.locator("#collect-done")).to_contain_text(f"{call_ref} collected")
        expect(page.locator("#collected-today tbody tr")).to_have_count(number)
        expect(page.locator("#code")).to_be_focused()
        expect(page.locator("#code")).to_have_value("")
        assert _status(call_ref) == Status.COLLECTED
    assert page.evaluate("window.__marker") == "same page", "the scan reloaded the page"
    # The same label again: refused, what was scanned kept, focus still in the field.
    page.keyboard.type(cds[0])
    page.keyboard.press("Enter")
    expect(page.locator("#code-error")).to_contain_text("was already collected")
    expect(page.locator("#code")).to_have_value(cds[0])
    expect(page.locator("#code")).to_be_focused()


def _sign_in(page: Page, live_url: str, email: str) -> None:
    """Sign in; a desk user lands on the page the desk's sign-in sends them to."""
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
