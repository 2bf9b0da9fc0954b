"""The S number autofill in a real browser (issue 13.8): type an S number, the patient's
details fill from the PAS register, read-only; another S number clears them; the form
submits with the register's details. And the same form without JavaScript.

Headless Chromium (Debian's) through Playwright on the test app served live. Screenshots
for people: test-artifacts/pas_autofill_found.png and pas_autofill_not_found.png.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, Page, expect

from app.extensions import db
from app.requests.models import Request
from app.timeutil import local_today
from tests.browser_support import save_screenshot
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser

S_NUMBER = "S number (UHL hospital number)"


def type_s_number(page: Page, value: str) -> None:
    """Type into the S number as a person does, then leave the field (the change)."""
    box = page.get_by_label(S_NUMBER)
    box.click()
    box.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Tab")


def fill_the_rest(page: Page) -> None:
    page.get_by_label("Sending hospital or trust").fill("Nottingham University Hospitals NHS Trust")
    page.get_by_label("Exam line 1: Date of examination").fill((local_today() - timedelta(days=30)).isoformat())
    page.get_by_label("Exam line 1: Examination (type and body part)").fill("CT head")
    page.get_by_label("Requesting clinician").fill("Dr Priya Shah")
    page.get_by_label("Consultant").fill("Dr Ahmed")


def test_typing_an_s_number_fills_the_patient_read_only_from_the_register(page, live_url, make_user, pas_patients):
    user = make_user("requester", password=PASSWORD)
    sign_in(page, live_url, user.email)
    page.goto(f"{live_url}/requests/new/import")
    page.evaluate("window.__marker = 1")
    status = page.locator("#pas-status[role=status]")

    type_s_number(page, "s123 4567")
    expect(status).to_contain_text("Found in the PAS register: SMITH, Margaret")
    shown = {"NHS number (if available)": "999 000 0018", "Family name": "SMITH", "Given name": "Margaret",
             "Date of birth": "1948-03-14", "Gender": "Female", "Address line 1": "12 Welford Road",
             "Town": "Leicester", "Postcode": "LE2 7AA"}
    for label, value in shown.items():
        box = page.get_by_label(label)
        expect(box).to_have_value(value)
        expect(box).not_to_be_editable()
    # The swap kept the keyboard where the person tabbed to, and the page was not reloaded.
    expect(page.get_by_label("NHS number (if available)")).to_be_focused()
    assert page.evaluate("window.__marker") == 1, "the look-up reloaded the page"
    save_screenshot(page, "pas_autofill_found")

    type_s_number(page, "S9999999")
    expect(status).to_contain_text("Not in the PAS register")
    family = page.get_by_label("Family name")
    expect(family).to_be_editable()
    expect(family).to_have_value("")  # the other patient's details are not left behind
    expect(page.get_by_label("Address line 1")).to_have_value("")
    save_screenshot(page, "pas_autofill_not_found")

    type_s_number(page, "S1234567")
    expect(family).to_have_value("SMITH")
    fill_the_rest(page)
    page.get_by_role("button", name="Submit request").click()
    expect(page.get_by_role("heading", name="Request submitted")).to_be_visible()
    db.session.expire_all()
    req = db.session.scalar(sa.select(Request))
    assert (req.family_name, req.nhs_number, req.address_line1) == ("SMITH", "9990000018", "12 Welford Road")


def test_without_javascript_the_form_is_typed_and_submitted_as_before(browser: Browser, live_url, make_user,
                                                                      pas_patients):
    user = make_user("requester", password=PASSWORD)
    context = browser.new_context(locale="en-GB", timezone_id="Europe/London", java_script_enabled=False)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        sign_in(page, live_url, user.email)
        page.goto(f"{live_url}/requests/new/import")
        page.get_by_label(S_NUMBER).fill("S1234567")
        for label, value in {"Family name": "Smith", "Given name": "Margaret", "Date of birth": "1948-03-14",
                             "NHS number (if available)": "999 000 0018"}.items():
            page.get_by_label(label).fill(value)
        fill_the_rest(page)
        page.get_by_role("button", name="Submit request").click()
        expect(page.get_by_role("heading", name="Request submitted")).to_be_visible()
    finally:
        context.close()
    db.session.expire_all()
    req = db.session.scalar(sa.select(Request))
    assert (req.family_name, req.postcode) == ("SMITH", "LE2 7AA")  # the register's, as with the autofill
