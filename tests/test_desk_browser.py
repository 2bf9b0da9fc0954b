"""The live queue in real browsers: one analyst saves, another analyst's queue follows.

Headless Chromium (Debian's) through Playwright on the test app served live; each
analyst in a browser context of their own (own cookies, own session). Analyst A edits a
row inline: the saved row replaces the old one in A's table without a page load (the
edit response is the request's <tbody>: its row, the editor closed). Analyst B touches
nothing: B's table polls every 5 s (hx-post /desk/table) and shows the change, with B's
tab and filters kept.
On a failure each page is saved to test-artifacts/<test>-<analyst>.png.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date

import pytest
from playwright.sync_api import Browser, Page, expect

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from tests.browser_support import save_screenshot
from tests.test_browser import sign_in

pytestmark = pytest.mark.browser

POLL_WAIT_MS = 8_000  # the table polls every 5 s; a request and a swap fit in the rest






@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Page]]:
    """Open a page in a browser context of its own (no shared cookies); screenshots on failure."""
    failures_before = request.session.testsfailed
    opened: list[tuple[str, Page]] = []

    def open_(name: str) -> Page:
        context = browser.new_context(locale="en-GB", timezone_id="Europe/London")
        context.set_default_timeout(10_000)
        page = context.new_page()
        opened.append((name, page))
        return page

    yield open_
    failed = request.session.testsfailed > failures_before
    for name, page in opened:
        if failed:
            print("screenshot:", save_screenshot(page, f"{request.node.name}-{name}"))
        page.context.close()


@pytest.fixture
def queue(app, make_user, pas_patients) -> dict[str, str]:
    """Four new requests from one requester: two imports, an export and a CD (kind -> call refs)."""
    requester = make_user("requester")
    made: dict[str, str] = {}
    for number, (kind, patient) in enumerate(
        [(Kind.IMPORT, pas_patients[0]), (Kind.EXPORT, pas_patients[1]),
         (Kind.IMPORT, pas_patients[1]), (Kind.CD, pas_patients[2])],
        start=1,
    ):
        call_ref = f"IEP-2026-{number:06d}"
        db.session.add(Request(
            call_ref=call_ref, kind=kind, status=Status.NEW, requester_id=requester.id,
            patient_id=patient.id, s_number=patient.s_number, nhs_number=patient.nhs_number or "",
            family_name=patient.family_name, given_name=patient.given_name, dob=patient.dob,
            contact_name="Dr Priya Shah", institution_name="Kettering General Hospital",
            required_by=date(2026, 12, 1),
        ))
        made[f"{kind.value}-{number}"] = call_ref
    db.session.commit()
    return made


def _row_refs(page: Page) -> list[str]:
    ids = page.locator("#desk-table tbody tr[id^='row-']").evaluate_all("rows => rows.map(r => r.id)")
    return sorted(i.removeprefix("row-") for i in ids)


def _open_all_tab(page: Page, live_url: str, marker: str) -> None:
    """The queue, on the All tab (a row that leaves Action Required stays on screen)."""
    page.goto(f"{live_url}/desk")
    page.evaluate(f"window.__marker = '{marker}'")
    page.get_by_role("button", name="All (4)").click()
    expect(page.locator("#desk-table nav.tabs [aria-current='page']")).to_contain_text("All")


def _accept(page: Page, call_ref: str) -> None:
    """Edit on the row, status Accepted in the editor (in a row under it), Save."""
    page.get_by_role("link", name=f"Edit {call_ref}").click()
    editor = page.locator(f"#editor-row-{call_ref}")
    expect(editor.get_by_role("heading", name=call_ref)).to_be_visible()
    # Located by name: the filter form's "Status" select is named "status" too.
    editor.locator("select[name='status']").select_option("Accepted")
    editor.get_by_role("button", name="Save").click()
    expect(page.locator("#queue-status")).to_contain_text(f"{call_ref} saved")
    expect(editor).to_have_count(0)  # a save closes the editor


# The save's answer is the request's <tbody>: its new row, the editor closed.
def test_saved_edit_updates_the_row_in_place_without_a_page_load(open_page, live_url, make_user, queue):
    target = queue["import-1"]
    page = open_page("analyst-a")
    sign_in(page, live_url, make_user("analyst").email, lands="/desk")
    _open_all_tab(page, live_url, "a")
    # The table's own 5 s poll would also bring the new status: answer it "nothing
    # changed" so that only the save's response (its out-of-band row) can update the row.
    page.route("**/desk/table", lambda route: route.fulfill(status=204))

    _accept(page, target)

    expect(page.locator(f"#row-{target} .badge")).to_have_text("Accepted", timeout=2_000)
    expect(page.locator("#desk-table tbody tr[id^='row-']")).to_have_count(4)
    # The row went to the table, not into the status line as loose text.
    expect(page.locator("#queue-status")).not_to_contain_text("Kettering General Hospital")
    assert page.evaluate("window.__marker") == "a", "saving reloaded the page"
@pytest.mark.slow


def test_other_analysts_queue_follows_within_the_poll_and_keeps_their_filters(
    open_page, live_url, make_user, queue
):
    target = queue["import-1"]
    imports = sorted([queue["import-1"], queue["import-3"]])
    a_page, b_page = open_page("analyst-a"), open_page("analyst-b")
    sign_in(a_page, live_url, make_user("analyst").email, lands="/desk")
    sign_in(b_page, live_url, make_user("analyst").email, lands="/desk")

    # B: the All tab, then Type = Import. Both are view state the poll must keep.
    _open_all_tab(b_page, live_url, "b")
    b_page.get_by_text("Search and filter").click()
    b_page.get_by_label("Type").select_option("import")
    b_page.get_by_role("button", name="Search").click()
    expect(b_page.locator("#desk-table tbody tr[id^='row-']")).to_have_count(2)
    assert _row_refs(b_page) == imports
    b_stamp = b_page.locator("#desk-table input[name='stamp']").input_value()

    # A, in a browser of its own, accepts one of the imports.
    _open_all_tab(a_page, live_url, "a")
    _accept(a_page, target)
    assert a_page.evaluate("window.__marker") == "a", "saving reloaded analyst A's page"

    # B, hands off: the next poll brings the change, and the view B chose stays.
    expect(b_page.locator(f"#row-{target} .badge")).to_have_text("Accepted", timeout=POLL_WAIT_MS)
    assert b_page.evaluate("window.__marker") == "b", "analyst B's page was reloaded, not refreshed"
    assert b_page.locator("#desk-table input[name='stamp']").input_value() != b_stamp
    assert _row_refs(b_page) == imports
    expect(b_page.locator(f"#row-{queue['import-3']} .badge")).to_have_text("New")
    expect(b_page.get_by_label("Type")).to_have_value("import")
    expect(b_page.locator("#desk-table nav.tabs [aria-current='page']")).to_contain_text("All")
