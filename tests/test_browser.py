"""The import form in a real browser: sign in, add an exam line without a reload, submit.

Headless Chromium (Debian's) through Playwright, against the test app served live. On a
failure the page is saved to test-artifacts/<test>.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser

PASSWORD = "correct-horse-9"
CALL_REF = re.compile(r"^IEP-\d{4}-\d{6}$")






def sign_in(page: Page, live_url: str, email: str, lands: str = "/requests") -> None:
    """Sign in through the form; `lands` is where the role starts (a requester: /requests)."""
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_url}{lands}")


def test_import_request_with_two_exams_gets_a_call_ref(page, live_url, make_user, pas_patients):
    user = make_user("requester", password=PASSWORD)
    sign_in(page, live_url, user.email)

    page.goto(f"{live_url}/requests/new/import")
    page.get_by_label("Sending hospital or trust").fill("Nottingham University Hospitals NHS Trust")
    page.get_by_label("S number (UHL hospital number)").fill("S1234567")
    page.get_by_label("S number (UHL hospital number)").press("Tab")
    # The PAS register fills the patient's details (issue 13.8; tests/test_pas_autofill_browser.py).
    expect(page.get_by_label("Family name")).to_have_value("SMITH")
    page.get_by_label("Requesting clinician").fill("Dr Priya Shah")
    page.get_by_label("Consultant").fill("Dr Ahmed")
    page.get_by_label("Department").fill("Respiratory Medicine")

    # HTMX swaps in the new line: the page (and this marker) must survive the click.
    page.evaluate("window.__marker = 1")
    page.get_by_role("button", name="Add another examination").click()
    expect(page.get_by_label("Exam line 2: Date of examination")).to_be_visible()
    assert page.evaluate("window.__marker") == 1, "adding an exam line reloaded the page"
    expect(page.locator("tr.exam-line")).to_have_count(2)

    page.get_by_label("Exam line 1: Date of examination").fill("2026-10-01")
    page.get_by_label("Exam line 1: Examination (type and body part)").fill("CT chest abdomen pelvis")
    page.get_by_label("Exam line 1: Exam code (if known)").fill("CCAPC")
    page.get_by_label("Exam line 2: Date of examination").fill("2026-10-15")
    page.get_by_label("Exam line 2: Examination (type and body part)").fill("MRI head")
    page.get_by_role("button", name="Submit request").click()

    expect(page.get_by_role("heading", name="Request submitted")).to_be_visible()
    call_ref_box = page.locator(".call-ref-big")
    expect(call_ref_box).to_have_text(CALL_REF)
    call_ref = call_ref_box.inner_text().strip()
    expect(page.get_by_role("cell", name="CT chest abdomen pelvis")).to_be_visible()
    expect(page.get_by_role("cell", name="MRI head")).to_be_visible()

    page.goto(f"{live_url}/requests")
    expect(page.get_by_role("link", name=call_ref)).to_be_visible()


def test_sign_in_with_the_keyboard_only(page, live_url, make_user):
    user = make_user("requester", password=PASSWORD)
    page.goto(f"{live_url}/login")
    email = page.get_by_label("NHS e-mail address")
    expect(email).to_be_focused()  # autofocus: no pointer needed to start
    page.keyboard.type(user.email)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Password")).to_be_focused()
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_url}/requests")
    expect(page.get_by_role("heading", name="My requests")).to_be_visible()
