"""The request's life in a real browser (issue 13.6-7): the desk sends a message and the
box empties; the requester corrects a request the desk asked about; the requester cancels
one, after saying yes.

Headless Chromium (Debian's) through Playwright, against the test app served live. On a
failure the page is saved to test-artifacts/<test>.png; the sent message is kept there too,
for a person to look at.
"""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Status
from app.workflow.models import OutboxEmail
from tests.browser_support import save_screenshot
from tests.forms_data import valid_import
from tests.test_browser import PASSWORD
from tests.test_mail import REQUESTER_MAIL, analyst, move, requester, submit  # noqa: F401 - fixtures

pytestmark = pytest.mark.browser

S = Status
NOTE = "Which hospital did the CT? The form names two."


def sign_in(page: Page, live_url: str, email: str) -> None:
    """Sign in; each role lands where it works, so only leaving the sign-in page is checked."""
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/login"))


def reload(req: Request) -> Request:
    db.session.expire_all()
    return db.session.get_one(Request, req.id)


def test_the_desk_sends_a_message_the_box_empties_and_the_message_shows(page, live_url, client, requester, analyst,
                                                                         request):
    req = submit(client, valid_import())
    sign_in(page, live_url, analyst.email)
    page.goto(f"{live_url}/requests/{req.call_ref}")

    box = page.get_by_label("Write a message")
    box.fill("Derby will send the CT today.")
    page.get_by_role("button", name="Send").click()

    expect(page.locator("#live .thread")).to_contain_text("Derby will send the CT today.")
    expect(box).to_have_value("")
    expect(page.locator("#compose-status")).to_have_text(
        f"Sent. An e-mail to {REQUESTER_MAIL} is queued; Mail not delivered lists it if it cannot be sent.")
    save_screenshot(page, request.node.name)
    db.session.commit()
    subjects = db.session.scalars(sa.select(OutboxEmail.subject)).all()
    assert subjects == [f"{req.call_ref}: a message from the Image Exchange Desk"]

    # A refused message keeps its text: here a choice the form does not offer.
    box.fill("Keep this text.")
    page.locator("#kind-message").evaluate("radio => { radio.value = 'bogus'; }")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#body-error")).to_contain_text("Not a valid choice")
    expect(box).to_have_value("Keep this text.")
    expect(page.locator("#live .thread")).not_to_contain_text("Keep this text.")


def test_the_requester_corrects_the_request_the_desk_asked_about(page, live_url, client, requester, analyst,
                                                                 request):
    req = submit(client, valid_import())
    move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note=NOTE)
    sign_in(page, live_url, requester.email)
    page.goto(f"{live_url}/requests/{req.call_ref}")
    expect(page.locator("#live")).to_contain_text(NOTE)

    page.get_by_role("link", name="Correct the request").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Correct your import request {req.call_ref}")
    expect(page.get_by_label("Consultant")).to_have_value("Dr Ahmed")
    page.get_by_label("Consultant").fill("Dr Okafor")
    save_screenshot(page, request.node.name)
    page.get_by_role("button", name="Save the corrections").click()

    expect(page).to_have_url(f"{live_url}/requests/{req.call_ref}")
    expect(page.get_by_role("status").first).to_contain_text("Your corrections")
    expect(page.locator(".summary .badge")).to_have_text("New")
    expect(page.locator("#live .thread")).to_contain_text("Consultant: Dr Ahmed → Dr Okafor")
    expect(page.get_by_role("link", name="Correct the request")).to_have_count(0)
    assert reload(req).consultant == "Dr Okafor"


def test_the_requester_cancels_after_confirming(page, live_url, client, requester):
    req = submit(client, valid_import())
    sign_in(page, live_url, requester.email)
    page.goto(f"{live_url}/requests/{req.call_ref}")

    page.get_by_role("link", name="Cancel the request").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Cancel request {req.call_ref}?")
    page.get_by_role("link", name="No, keep it").click()
    expect(page).to_have_url(f"{live_url}/requests/{req.call_ref}")
    assert reload(req).status == S.NEW

    page.get_by_role("link", name="Cancel the request").click()
    page.get_by_role("button", name=f"Yes, cancel {req.call_ref}").click()
    expect(page.get_by_role("status").first).to_contain_text(f"{req.call_ref} is cancelled")
    expect(page.locator(".summary .badge")).to_have_text("Cancelled")
    expect(page.get_by_role("link", name="Cancel the request")).to_have_count(0)
    assert reload(req).status == S.CANCELLED
