"""The institution register in a real browser (issue 14.2): the search narrows the rows as
the admin types, without a page load, and the count is announced; the edit page ticks the
node that reaches the institution. Screenshots for people in test-artifacts/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from app.extensions import db
from app.requests.models import Institution
from app.transfers.nodes import upsert_node
from tests.browser_support import save_screenshot
from tests.test_browser import sign_in

pytestmark = pytest.mark.browser


def test_the_search_narrows_the_rows_as_one_types_and_edit_ticks_the_node(page: Page, live_url, make_user):
    db.session.add_all([
        Institution(name="Nottingham University Hospitals NHS Trust", site="Queen's Medical Centre",
                    email="imaging@nuh.nhs.uk"),
        Institution(name="Leeds Teaching Hospitals NHS Trust", site="St James's", email="imaging@leeds.nhs.uk"),
        Institution(name="Closed Cottage Hospital", active=False),
    ])
    upsert_node("NUH Radiology PACS", "NUHPACS", "10.20.0.5", 104, "remote",
                "Nottingham University Hospitals NHS Trust")
    db.session.commit()
    admin = make_user("admin")
    sign_in(page, live_url, admin.email, lands="/admin/")
    page.get_by_role("link", name="Institutions").click()
    rows = page.locator("#institution-rows tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#institution-rows tbody tr.inactive")).to_contain_text("Deactivated")
    page.evaluate("window.__same_page = true")
    page.get_by_label("Search institutions").press_sequentially("queen", delay=30)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("NUH Radiology PACS")
    expect(page.get_by_role("status").filter(has_text="match")).to_have_text("1 institution matches “queen”.")
    assert page.evaluate("window.__same_page === true"), "the search reloaded the page"
    save_screenshot(page, "institutions-search")
    page.get_by_role("link", name="Edit Nottingham University Hospitals NHS Trust").click()
    expect(page.get_by_label("Site (optional)")).to_have_value("Queen's Medical Centre")
    expect(page.get_by_label("NUH Radiology PACS (NUHPACS@10.20.0.5:104)")).to_be_checked()
    save_screenshot(page, "institution-edit")
    page.get_by_label("Contact e-mail for notifications (optional)").fill("not an address")
    page.get_by_role("button", name="Save institution").click()
    expect(page.locator("#email-error")).to_contain_text("Enter a valid e-mail address")
    expect(page.get_by_label("Contact e-mail for notifications (optional)")).to_have_value("not an address")


def test_a_node_is_deactivated_from_its_row_and_edited_from_its_page(page: Page, live_url, make_user):
    upsert_node("UHLPACSWFM01", "UHLPACS", "10.0.0.1", 104, "local_pacs")
    upsert_node("Leeds PACS", "LEEDS", "10.1.2.3", 104, "remote", "Leeds Teaching Hospitals NHS Trust")
    db.session.commit()
    am = make_user("am_radiology")
    sign_in(page, live_url, am.email, lands="/desk")
    page.goto(f"{live_url}/admin/nodes")
    page.get_by_role("button", name="Deactivate Leeds PACS").click()
    expect(page.get_by_role("status").filter(has_text="deactivated")).to_contain_text(
        "no longer offered for new transfers")
    expect(page.get_by_role("row", name="Leeds PACS Deactivated")).to_be_visible()
    save_screenshot(page, "nodes-register")
    page.get_by_role("link", name="Edit Leeds PACS").click()
    expect(page.get_by_label("Name")).to_have_value("Leeds PACS")
    page.get_by_label("Name").fill("Leeds Radiology PACS")
    page.get_by_role("button", name="Save node").click()
    expect(page.get_by_role("row", name="Leeds Radiology PACS Deactivated")).to_be_visible()
    page.get_by_role("button", name="Reactivate Leeds Radiology PACS").click()
    expect(page.get_by_role("button", name="Deactivate Leeds Radiology PACS")).to_be_visible()
