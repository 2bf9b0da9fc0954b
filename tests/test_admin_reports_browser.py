"""The compliance report in headless Chromium (issue 14.6): an admin chooses a month, the
report shows with its charts drawn (inline SVG, under the desk's Content-Security-Policy),
and the PDF and the CSV download. The page is saved to test-artifacts/ for people to see.
"""

from __future__ import annotations

import csv
import io

import pytest
from playwright.sync_api import expect
from pypdf import PdfReader

from tests.browser_support import save_screenshot
from tests.test_admin_reports import small_history  # noqa: F401  (the fixture)
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser


def test_an_admin_reads_a_month_and_downloads_it_as_pdf_and_csv(page, live_url, make_user, small_history):
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    admin = make_user("admin", password=PASSWORD)
    sign_in(page, live_url, admin.email, lands="/admin/")
    page.get_by_role("link", name="Compliance reports").click()
    expect(page.get_by_role("heading", name="Compliance reports", level=1)).to_be_visible()

    page.get_by_label("Period").select_option("month")
    page.get_by_label("Year", exact=True).fill("2026")
    page.get_by_label("Month").select_option(label="March")
    page.get_by_role("button", name="Show the report").click()
    expect(page.get_by_role("heading", name="Image exchange compliance: March 2026")).to_be_visible()
    expect(page.locator("#report-requests")).to_contain_text("3 requests submitted")

    # The charts are drawn: inline SVG, named for assistive technology, with a size on screen.
    chart = page.get_by_role("img", name="Requests submitted, by kind")
    expect(chart).to_be_visible()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    expect(page.locator("figure.report-chart svg")).to_have_count(6)
    expect(page.locator("#chart-targets")).to_contain_text("100 %")
    # The bars are grey with a black outline: the page's policy let their attributes through.
    fill = page.locator("#chart-kinds svg rect[stroke]").first.evaluate("e => getComputedStyle(e).fill")
    assert fill == "rgb(208, 208, 208)"
    save_screenshot(page, "admin_compliance_report")

    with page.expect_download() as pdf_download:
        page.get_by_role("link", name="Download PDF").click()
    pdf = pdf_download.value
    assert pdf.suggested_filename == "iep-compliance-2026-03.pdf"
    with open(pdf.path(), "rb") as handle:
        data = handle.read()
    assert data.startswith(b"%PDF")
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
    assert "Image exchange compliance: March 2026" in text and "Requests submitted, by kind" in text

    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Download CSV").click()
    sheet = csv_download.value
    assert sheet.suggested_filename == "iep-compliance-2026-03.csv"
    with open(sheet.path(), encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["period", "section", "group", "measure", "value", "unit"]
    assert ["2026-03", "Requests", "All", "submitted", "3", "requests"] in rows

    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems


def test_a_period_that_is_not_one_is_named_beside_its_control(page, live_url, make_user):
    admin = make_user("admin", password=PASSWORD)
    sign_in(page, live_url, admin.email, lands="/admin/")
    page.goto(f"{live_url}/admin/reports")
    page.get_by_label("Period").select_option("year")
    page.get_by_label("Year", exact=True).fill("20x6")
    page.get_by_role("button", name="Show the report").click()
    expect(page.locator("#report-year-error")).to_contain_text("The year must be four digits")
    expect(page.get_by_label("Year", exact=True)).to_have_value("20x6")
    expect(page.get_by_label("Year", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("link", name="Download PDF")).to_have_count(0)
