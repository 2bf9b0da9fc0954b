"""The PAS register upload in a real browser (issue 14.3): an admin chooses an extract with
a bad line, watches the check, reads the preview that names the bad line, ticks the box,
applies, and the page shows the new last extract; the jobs run on worker.py's pool.

Headless Chromium (Debian's) through Playwright on the test app served live. Screenshot for
people: test-artifacts/pas_upload_preview.png.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from app.extensions import db
from app.patients.models import PasExtract, Patient
from tests.browser_support import save_screenshot
from tests.pool import kill_pool, start_pool
from tests.test_admin_pasup import EXTRACT
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser


def test_an_admin_previews_an_extract_with_a_bad_line_then_applies_it(
        page, live_url, make_user, pas_patients, app, database_url, redis_url, tmp_path):
    admin = make_user("admin", password=PASSWORD)
    extract = tmp_path / "pas-2026-12.csv"
    extract.write_bytes(EXTRACT)
    pool = start_pool(app, database_url, redis_url, "maintenance=1")
    try:
        sign_in(page, live_url, admin.email, lands="/admin/")
        page.get_by_role("link", name="PAS register").click()
        expect(page.get_by_role("heading", name="PAS register", level=1)).to_be_visible()
        expect(page.locator("#pas-last")).to_contain_text("No extract has been applied yet.")
        page.get_by_label("PAS extract (CSV file)").set_input_files(str(extract))
        page.get_by_role("button", name="Check the file").click()

        # The pool checks it; the section polls itself until the preview is there.
        expect(page.get_by_role("heading", name="Preview: what applying it would do")).to_be_visible(timeout=60_000)
        figures = page.locator("table.pas-figures")
        expect(figures.get_by_role("row", name="Patients added")).to_contain_text("1")
        expect(figures.get_by_role("row", name="Patients updated")).to_contain_text("1")
        expect(figures.get_by_role("row", name="Bad lines, left out")).to_contain_text("6")
        bad = page.locator("table.pas-bad-lines")
        line_6 = bad.get_by_role("row").filter(has=page.get_by_role("cell", name="6", exact=True))
        expect(line_6).to_contain_text("nhs_number")
        expect(line_6).to_contain_text("This is not a valid NHS number")
        expect(page.locator("#pas-extract")).to_have_attribute("aria-busy", "false")
        save_screenshot(page, "pas_upload_preview")

        # Apply without the box ticked: refused, nothing changes.
        page.get_by_role("button", name="Apply to the PAS register").click()
        expect(page.locator("#confirm-error")).to_contain_text("Tick the box to confirm")
        page.get_by_label("I have checked the preview").check()
        page.get_by_role("button", name="Apply to the PAS register").click()
        expect(page.get_by_role("status").filter(has_text="Applied: 1 added, 1 updated, 1 unchanged, 6 bad lines"
                                                 )).to_be_visible(timeout=60_000)
        last = page.locator("#pas-last")
        expect(last).to_contain_text("pas-2026-12.csv")
        expect(last).to_contain_text(f"9 rows, {len(EXTRACT):,} bytes")
        expect(last).to_contain_text(admin.email)
        save_screenshot(page, "pas_upload_applied")
    finally:
        kill_pool(pool)
    db.session.expire_all()
    assert db.session.scalar(sa.select(Patient.address_line1).where(Patient.s_number == "S7654321")) == "9 New Walk"
    assert db.session.scalar(sa.select(PasExtract.state).where(PasExtract.actor == admin.email)) == PasExtract.APPLIED
