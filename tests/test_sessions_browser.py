"""The idle time-out in headless Chromium (issue 11.2): the desk's queue polls every 5 s,
yet an untouched page is signed out; "Stay signed in" keeps it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.sync_api import Browser, expect

from tests.test_browser import PASSWORD

pytestmark = pytest.mark.browser


def test_a_polling_desk_page_is_signed_out_when_nobody_touches_it(app, browser: Browser, live_url, make_user):
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=12)
    analyst = make_user("analyst", password=PASSWORD)
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    polls: list[str] = []
    page.on("request", lambda r: r.url.endswith("/desk/table") and polls.append(r.headers.get("x-iep-poll", "")))
    page.goto(f"{live_url}/login")
    page.get_by_label("NHS e-mail address").fill(analyst.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_url}/desk")
    warning = page.locator("#session-warning")
    expect(warning).to_be_visible(timeout=10_000)  # half of 12 s before the end
    page.get_by_role("button", name="Stay signed in").click()
    expect(warning).to_be_hidden()
    page.wait_for_timeout(8_000)  # past the first deadline: still here, the table still polling
    assert page.url.endswith("/desk")
    expect(page).to_have_url(f"{live_url}/login?ended=1&next=/desk", timeout=20_000)
    assert "1" in polls  # the polls said they were polls
    assert "Your session has ended" in page.content()
    context.close()


