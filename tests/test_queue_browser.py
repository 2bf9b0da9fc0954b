"""The queue as an analyst works it (issue 13.1-4), in headless Chromium.

Edit opens the editor in a row of its own under the request's row: no other row is covered
(each one's place is measured, and what the browser shows at its cells is asked), the
queue's refresh waits while it is open, Close and Escape close it and focus goes back to
Edit. The queue uses the screen's width at 1,280 and 1,920 px with call references on one
line (screenshots kept in test-artifacts/queue-<width>.png for a person to look at); the
"Needed by" column and the "Requester replied" badge show; each role lands where it works.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import local_today, utcnow
from app.workflow.models import Message, MessageKind
from tests.browser_support import ARTIFACTS
from tests.test_browser import sign_in

pytestmark = pytest.mark.browser

INSTITUTIONS = ["Kettering General Hospital", "Nottingham University Hospitals NHS Trust",
                "University Hospitals Coventry and Warwickshire NHS Trust", "Spire Leicester Hospital",
                "Northampton General Hospital NHS Trust", "Leeds Teaching Hospitals"]
NEEDED_BY = local_today() + timedelta(days=30)


@pytest.fixture
def queue(app, make_user, pas_patients) -> dict[str, object]:
    """Six new requests (the first Blue Light, the third needed in a month's time); on
    the fourth the desk asked for details and the requester answered."""
    requester, analyst = make_user("requester"), make_user("analyst")
    refs = []
    for number in range(1, 7):
        patient = pas_patients[number % 3]
        call_ref = f"IEP-2026-{number:06d}"
        db.session.add(Request(
            call_ref=call_ref, kind=[Kind.IMPORT, Kind.EXPORT, Kind.CD][number % 3], status=Status.NEW,
            priority=Priority.BLUE_LIGHT if number == 1 else Priority.STANDARD,
            priority_reason="Theatre at 14:00" if number == 1 else "",
            requester_id=requester.id, patient_id=patient.id, s_number=patient.s_number,
            nhs_number=patient.nhs_number or "", family_name=patient.family_name, given_name=patient.given_name,
            dob=patient.dob, contact_name="Dr Priya Shah", institution_name=INSTITUTIONS[number - 1],
            required_by=NEEDED_BY if number == 3 else None,
        ))
        refs.append(call_ref)
    db.session.flush()
    asked = db.session.scalar(sa.select(Request).where(Request.call_ref == refs[3]))
    now = utcnow()
    db.session.add_all([
        Message(request_id=asked.id, author_id=analyst.id, kind=MessageKind.MESSAGE.value,
                body="Which date was the CT?", created_at=now - timedelta(hours=2)),
        Message(request_id=asked.id, author_id=requester.id, kind=MessageKind.MESSAGE.value,
                body="The 3rd of March.", created_at=now - timedelta(hours=1)),
    ])
    db.session.commit()
    return {"refs": refs, "analyst": analyst}


def _open_queue(page: Page, live_url: str, analyst) -> None:  # noqa: ANN001
    """Sign in as the analyst (the queue is where they land), then the All tab."""
    sign_in(page, live_url, analyst.email, lands="/desk")
    page.get_by_role("button", name="All (6)").click()
    expect(page.locator("#desk-table nav.tabs [aria-current='page']")).to_contain_text("All")


def _box(page: Page, selector: str) -> dict[str, float]:
    """Where the element is on the page (not in the viewport: clicks and checks scroll)."""
    return page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect();"
        " return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}; }")


def _row_boxes(page: Page, refs: list[str]) -> dict[str, dict[str, float]]:
    return {ref: _box(page, f"#row-{ref}") for ref in refs}


def _overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] - 0.5 and b["y"] < a["y"] + a["height"] - 0.5)


def _shown_at_cells(page: Page, ref: str) -> list[str]:
    """The id of the row the browser shows at the middle of each of the row's cells."""
    return page.evaluate("""(ref) => Array.from(document.getElementById('row-' + ref).cells).map(cell => {
        cell.scrollIntoView({block: 'nearest'});
        const s = cell.getBoundingClientRect();
        const hit = document.elementFromPoint(s.left + s.width / 2, s.top + s.height / 2);
        const row = hit && hit.closest('tr');
        return row ? row.id : '';
    })""", ref)


def test_edit_opens_under_its_row_covers_nothing_and_a_save_shows_in_the_row(page, live_url, queue):
    refs, analyst = queue["refs"], queue["analyst"]
    target = refs[2]
    _open_queue(page, live_url, analyst)
    # A patient typed in the filters (not searched): the Edit link must not carry it.
    page.get_by_text("Search and filter").click()
    page.get_by_label("Patient (family name[, given])").fill("SMITH")
    edit_urls: list[str] = []
    page.on("request", lambda r: "/edit" in r.url and r.method == "GET" and edit_urls.append(r.url))
    order = page.locator("#desk-table tr[id^='row-']").evaluate_all("rows => rows.map(r => r.id.slice(4))")
    before = _row_boxes(page, order)

    page.get_by_role("link", name=f"Edit {target}").click()
    editor = page.locator(f"#editor-row-{target}")
    expect(editor.get_by_role("heading", name=target)).to_be_visible()
    expect(page.get_by_role("link", name=f"Edit {target}")).to_have_attribute("aria-expanded", "true")
    assert edit_urls and all("?" not in url for url in edit_urls), edit_urls

    # Directly under its row, the table's full width; the rows above stay where they were,
    # the rows below move down by the editor's height, and none is covered.
    box, row = _box(page, f"#editor-row-{target}"), _box(page, f"#row-{target}")
    assert abs(box["y"] - (row["y"] + row["height"])) <= 1
    assert box["width"] >= _box(page, "#desk-table table")["width"] - 8  # less half the collapsed border
    after = _row_boxes(page, order)
    below = order[order.index(target) + 1:]
    assert below, "the edited row should have rows under it"
    for ref in order:
        moved = after[ref]["y"] - before[ref]["y"]
        expected = box["height"] if ref in below else 0
        assert abs(moved - expected) <= 1, (ref, moved, expected)
        assert not _overlaps(after[ref], box), ref
        assert set(_shown_at_cells(page, ref)) == {f"row-{ref}"}, ref

    # Focus is in the editor; a change saved shows in the row, and focus is back on Edit.
    expect(editor.locator("select[name='status']")).to_be_focused()
    editor.locator("select[name='status']").select_option("Accepted")
    editor.get_by_label("Assigned to").select_option(label=analyst.name)
    editor.get_by_role("button", name="Save").click()
    expect(page.locator("#queue-status")).to_have_text(f"{target} saved. Its row shows the new values.")
    expect(editor).to_have_count(0)
    expect(page.locator(f"#row-{target} .badge").first).to_have_text("Accepted")
    expect(page.locator(f"#row-{target} td").nth(8)).to_have_text(analyst.name)
    expect(page.get_by_role("link", name=f"Edit {target}")).to_be_focused()
    expect(page.get_by_role("link", name=f"Edit {target}")).to_have_attribute("aria-expanded", "false")


@pytest.mark.slow
def test_close_and_escape_close_the_editor_focus_returns_and_the_refresh_waits(page, live_url, queue):
    refs, analyst = queue["refs"], queue["analyst"]
    target = refs[1]
    polls: list[str] = []
    page.on("request", lambda r: r.url.endswith("/desk/table") and polls.append(r.url))
    _open_queue(page, live_url, analyst)
    edit = page.get_by_role("link", name=f"Edit {target}")
    editor = page.locator(f"#editor-row-{target}")

    edit.click()
    expect(editor).to_be_visible()
    editor.get_by_role("button", name=f"Close the editor of {target}").click()
    expect(editor).to_have_count(0)
    expect(edit).to_be_focused()

    # By keyboard: Enter on Edit opens it with focus inside; what is typed survives the
    # refresh, which waits while the editor is open (the table polls every 5 s).
    page.keyboard.press("Enter")
    expect(editor.locator("select[name='status']")).to_be_focused()
    editor.get_by_label("NTT (Offshore team) call ref").fill("NTT-4411")
    polls.clear()
    page.wait_for_timeout(6_500)
    assert polls == [], "the queue refreshed under an open editor"
    expect(editor.get_by_label("NTT (Offshore team) call ref")).to_have_value("NTT-4411")
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)
    expect(edit).to_be_focused()
    # Closed, the queue refreshes again.
    page.wait_for_timeout(6_000)
    assert polls, "the queue's refresh did not resume after the editor closed"


@pytest.mark.parametrize("width", [1280, 1920])
def test_the_queue_uses_the_width_and_call_references_stay_on_one_line(page, live_url, queue, width):
    refs, analyst = queue["refs"], queue["analyst"]
    page.set_viewport_size({"width": width, "height": 900})
    _open_queue(page, live_url, analyst)
    table = _box(page, "#desk-table table")
    assert table["width"] >= width - 60, (table["width"], width)
    for ref in refs:
        lines = page.locator(f"#row-{ref} .queue-call-ref").evaluate(
            "a => [a.getBoundingClientRect().height, parseFloat(getComputedStyle(a).lineHeight),"
            " a.getClientRects().length]")
        height, line_height, boxes = lines
        assert boxes == 1 and abs(height - line_height) <= 1, (ref, lines)
    # Needed by: a date where the requester gave one, a dash elsewhere.
    expect(page.get_by_role("columnheader", name="Needed by")).to_be_visible()
    expect(page.locator(f"#row-{refs[2]} td.needed-by")).to_have_text(f"{NEEDED_BY:%d/%m/%Y}")
    expect(page.locator(f"#row-{refs[1]} td.needed-by")).to_have_text("—")
    # The requester answered the desk on the fourth request only.
    expect(page.locator(f"#row-{refs[3]}")).to_contain_text("Requester replied")
    expect(page.locator(".badge.replied")).to_have_count(1)
    # Blue Light keeps its countdown.
    expect(page.locator(f"#row-{refs[0]}")).to_contain_text(re.compile(r"Blue Light\s+[34] h \d+ min left"))
    # For the person looking: the queue with one editor open.
    page.get_by_role("link", name=f"Edit {refs[2]}").click()
    expect(page.locator(f"#editor-row-{refs[2]}")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"queue-{width}.png"), full_page=True)


@pytest.mark.parametrize(("role", "lands", "heading"), [
    ("requester", "/requests", "My requests"),
    ("analyst", "/desk", "Queue"),
    ("am_radiology", "/desk", "Queue"),
    ("admin", "/admin/", "Administration"),
    ("radiologist", "/trauma", "Trauma transfer to Nottingham"),
])
def test_each_role_lands_where_it_works(page, live_url, make_user, role, lands, heading):
    """Signed in through the form, with no page to go back to."""
    user = make_user(role)
    sign_in(page, live_url, user.email, lands=lands)
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    # The brand link, the start page, goes to the same place.
    page.get_by_role("link", name="Image Exchange Desk").click()
    expect(page).to_have_url(f"{live_url}{lands}")
