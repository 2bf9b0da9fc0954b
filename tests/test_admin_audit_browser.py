"""The audit viewer in a real browser (issue 14.5): an admin filters the trail by call
reference from the keyboard, downloads it as CSV, and filters by patient without the S
number reaching the address bar.

Headless Chromium (Debian's) through Playwright on the test app served live. Screenshot
for people: test-artifacts/admin_audit_filtered.png.
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime

import pytest
from playwright.sync_api import expect

from app.audit import AuditEvent
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind
from tests.browser_support import save_screenshot
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser

MINE, OTHER = "IEP-2026-000101", "IEP-2026-000102"


@pytest.fixture
def two_requests(app, make_user, pas_patients) -> dict[str, int]:
    """Two requests (SMITH's and PATEL's), each viewed by an analyst."""
    analyst = make_user("analyst", email="alice@test.uhl")
    ids = {}
    for ref, patient, hour in ((MINE, pas_patients[0], 9), (OTHER, pas_patients[1], 10)):
        req = Request(call_ref=ref, kind=Kind.IMPORT, requester_id=analyst.id, patient_id=patient.id,
                      s_number=patient.s_number, family_name=patient.family_name, given_name=patient.given_name,
                      dob=patient.dob, contact_name="Dr Shah")
        db.session.add(req)
        db.session.flush()
        db.session.add(AuditEvent(action="view", user_id=analyst.id, actor=analyst.email, request_id=req.id,
                                  detail=f"{ref} desk editor", at=datetime(2026, 3, 10, hour, tzinfo=UTC)))
        ids[ref] = req.id
    db.session.commit()
    return ids


def test_an_admin_filters_by_call_reference_and_downloads_the_csv(page, live_url, make_user, two_requests):
    admin = make_user("admin", password=PASSWORD)
    sign_in(page, live_url, admin.email, lands="/admin/")
    page.get_by_role("link", name="Audit trail").click()
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()

    page.get_by_label("Call reference").fill(MINE.lower())
    page.keyboard.press("Enter")  # the form submits from the keyboard
    expect(page).to_have_url(f"{live_url}/admin/audit?call_ref={MINE}")
    rows = page.locator("table.audit-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"{MINE} desk editor")
    expect(page.get_by_label("Call reference")).to_have_value(MINE)
    save_screenshot(page, "admin_audit_filtered")

    with page.expect_download() as waiting:
        page.get_by_role("button", name="Download as CSV").click()
    download = waiting.value
    assert re.fullmatch(r"audit-\d{8}-\d{4}\.csv", download.suggested_filename)
    with open(download.path(), newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0][:3] == ["at (Europe/London)", "event id", "user id"]
    assert [line[6] for line in lines[1:]] == [MINE]

    # The patient filter: answered in place, the S number nowhere in the address bar.
    page.get_by_label("Call reference").fill("")
    page.get_by_label("Patient (S number or NHS number)").fill("S7654321")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(OTHER)
    expect(page).to_have_url(f"{live_url}/admin/audit")
