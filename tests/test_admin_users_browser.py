"""Users in headless Chromium (issue 14.1): an admin finds the page from the admin home, adds a
user (after a refused password, with what was typed kept), changes their role, and finds them
with the live search; the new user is sent to choose their own password."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import save_screenshot
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser


def test_an_admin_adds_a_user_and_changes_their_role(page: Page, live_url, make_user, browser):  # noqa: ANN001
    admin = make_user("admin", password=PASSWORD)
    make_user("requester", email="someone.else@test.uhl")
    sign_in(page, live_url, admin.email, lands="/admin/")
    page.get_by_role("link", name="Users").first.click()
    page.get_by_role("link", name="Add a user").click()
    page.get_by_label("Full name").fill("Nadia Okafor")
    page.get_by_label("NHS e-mail address").fill("nadia.okafor@test.uhl")
    page.get_by_label("Role").select_option(label="Requester")
    page.get_by_label("Department (optional)").fill("Ward 7")
    page.get_by_label("Initial password").fill("Password123!")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#password-error")).to_contain_text("too easy to guess")
    expect(page.get_by_label("Full name")).to_have_value("Nadia Okafor")  # kept
    expect(page.get_by_label("Department (optional)")).to_have_value("Ward 7")
    expect(page.get_by_role("link", name="Initial password: This password is too easy to guess", exact=False)) \
        .to_be_visible()  # the summary links the field
    page.get_by_label("Initial password").fill("copper-meadow-violin")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Nadia Okafor")
    expect(page.get_by_role("status")).to_contain_text("can now sign in as Requester")

    page.get_by_label("Role").select_option(label="Service desk analyst")
    page.get_by_role("button", name="Change role").click()
    expect(page.get_by_role("status")).to_contain_text("Nadia Okafor is now Service desk analyst")
    expect(page.locator(".user-facts")).to_contain_text("Service desk analyst")
    save_screenshot(page, "admin_user_page")

    # The live search narrows the list as one types (htmx), without a page load.
    page.goto(f"{live_url}/admin/users")
    rows = page.locator("#users-list tbody tr")
    expect(rows).to_have_count(3)
    page.get_by_label("Name or e-mail address").fill("okafor")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Service desk analyst")
    page.get_by_label("Role", exact=True).select_option(label="Requester")
    expect(page.locator("#users-list")).to_contain_text("No user matches “okafor” with that role")
    save_screenshot(page, "admin_users_search")

    # The new user's first sign-in: their own password first.
    theirs = browser.new_context(locale="en-GB").new_page()
    theirs.goto(f"{live_url}/login")
    theirs.get_by_label("NHS e-mail address").fill("nadia.okafor@test.uhl")
    theirs.get_by_label("Password").fill("copper-meadow-violin")
    theirs.get_by_role("button", name="Sign in").click()
    expect(theirs).to_have_url(f"{live_url}/account/password")
    theirs.get_by_label("Current password").fill("copper-meadow-violin")
    theirs.locator("#new_password").fill("lantern-orbit-kettle")
    theirs.get_by_label("New password again").fill("lantern-orbit-kettle")
    theirs.get_by_role("button", name="Change password").click()
    expect(theirs).to_have_url(f"{live_url}/desk")
    theirs.context.close()
