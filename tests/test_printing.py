"""Printables: the completed forms (Appendices 2, 3, 6), the CD labels (Appendix 5), the
next CD collection date, and the locked-down renderer (STYLE habit 8; PITFALLS "Web")."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path

import holidays
import pytest
import segno
import sqlalchemy as sa
from pypdf import PdfReader

from app.audit import AuditEvent
from app.extensions import db
from app.printing import render
from app.printing.collections import is_working_day, next_collection_date
from app.printing.render import STATIC_ORIGIN, RefusedURL, StaticOnlyFetcher
from app.requests.models import Request
from app.timeutil import freeze, local_today
from tests.conftest import post_form
from tests.forms_data import valid_cd, valid_export, valid_import

FORMS = {
    "import": ("/requests/new/import", valid_import),
    "export": ("/requests/new/export", valid_export),
    "cd": ("/requests/new/cd", valid_cd),
}
MARKUP = '<img src="http://127.0.0.1:9/x"> <b>bold</b>'


@pytest.fixture
def requester(login_as, pas_patients):
    return login_as("requester")


def submit(client, kind: str, **changes: str) -> str:
    """Send a valid form of `kind` (with `changes`) through its page; return the call ref."""
    url, data = FORMS[kind]
    response = post_form(client, url, {**data(), **changes})
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    return re.search(r"/requests/(IEP-\d{4}-\d{6})", response.headers["Location"]).group(1)


def pdf_pages(response) -> list[str]:
    """Each page's text, whitespace folded (table cells wrap lines where they like)."""
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.data.startswith(b"%PDF-")
    reader = PdfReader(BytesIO(response.data))
    return [re.sub(r"\s+", " ", page.extract_text()) for page in reader.pages]


def pdf_text(response) -> str:
    return " ".join(pdf_pages(response))


def downloads() -> list[str]:
    return list(
        db.session.scalars(
            sa.select(AuditEvent.detail).where(AuditEvent.action == "download_pdf").order_by(AuditEvent.id)
        )
    )


def request_row(call_ref: str) -> Request:
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


@pytest.fixture
def fetched(monkeypatch) -> Iterator[list[str]]:
    """Every URL WeasyPrint asks the fetcher for, and no socket may be opened meanwhile."""
    urls: list[str] = []
    original = StaticOnlyFetcher.fetch

    def recording(self, url, headers=None):  # noqa: ANN001, ANN202
        urls.append(url)
        return original(self, url, headers)

    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the PDF renderer tried to open a network connection")

    monkeypatch.setattr(StaticOnlyFetcher, "fetch", recording)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    yield urls


@pytest.fixture
def rendered_html(monkeypatch) -> list[str]:
    """The HTML documents handed to WeasyPrint."""
    documents: list[str] = []
    real_html = render.HTML

    def capturing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        documents.append(kwargs["string"])
        return real_html(*args, **kwargs)

    monkeypatch.setattr(render, "HTML", capturing)
    return documents


# --- The completed forms ---------------------------------------------------------------


def test_import_form_pdf_mirrors_appendix_2(client, requester):
    call_ref = submit(
        client,
        "import",
        priority="Blue Light",
        priority_reason="Theatre at 14:00 today",
        comments="Please send the reports too.",
        **{
            "exams-1-exam_date": (local_today() - timedelta(days=400)).isoformat(),
            "exams-1-description": "MRI head",
            "exams-1-exam_code": "MHEAD",
        },
    )
    text = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    assert "Request for Import of Images to UHL PACS" in text
    assert call_ref in text
    for expected in (
        "SMITH, Margaret", "S1234567", "999 000 0018", "14/03/1948", "12 Welford Road", "LE2 7AA",
        "Nottingham University Hospitals NHS Trust",
        "☒ Blue Light", "Theatre at 14:00 today",
        "CT chest abdomen pelvis", "CCAPC", "MRI head", "MHEAD",
        "Requesting clinician Dr Priya Shah", "Consultant Dr Ahmed", "Department Respiratory Medicine",
        "priya.shah@uhl-tr.nhs.uk", "0116 258 4000", "Please send the reports too.",
        "***** For use by MBP *****", "NTT (Offshore team) Call ref", "Imaging up loaded by",
        "Images 'fixed up' by",
    ):
        assert expected in text, expected
    for days, exam in ((30, "CT chest abdomen pelvis CCAPC"), (400, "MRI head MHEAD")):
        assert f"{(local_today() - timedelta(days=days)):%d/%m/%Y} {exam}" in text
    assert "☐ Standard" in text  # the options not chosen are shown crossed out, as on paper


def test_export_form_pdf_mirrors_appendix_3(client, requester):
    call_ref = submit(client, "export")
    required_by = (local_today() + timedelta(days=7)).strftime("%d/%m/%Y")
    text = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    assert "Request for Export of images from UHL PACS" in text and call_ref in text
    for expected in (
        "UHL staff contact details", "Request Details", "Patient Details",
        "Which Site/Trust needs these studies? Kettering General Hospital NHS Foundation Trust",
        "Dr Jane Rowe, Consultant Radiologist", "01536 492000", "jane.rowe@kgh.nhs.uk",
        "☒ Standard", "Reason for Priority MDT Referral", f"Date Required By {required_by}",
        "SMITH, Margaret", "S1234567", "999 000 0018",
        "Date of Study Type of study and body part Exam Codes", "CT chest abdomen pelvis CCAPC",
        "***** For use by MBP *****", "NTT (Offshore team) Call ref", "Date Imaging sent",
    ):
        assert expected in text, expected


def test_cd_form_pdf_mirrors_appendix_6(client, requester):
    call_ref = submit(client, "cd", cd_count="3", drop_off_site="GH")
    text = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    assert "Request for CD Import to UHL PACS" in text
    for expected in (
        f"Service desk call reference number {call_ref}",
        "Internal post address Ward 7, Leicester Royal Infirmary",
        "Number of CD's 3",
        "GH – Radiology Reception, Glenfield Hospital",
        "MRI lumbar spine (Spire)",
        "SMITH, Margaret", "S1234567", "999 000 0018", "14/03/1948", "12 Welford Road",
        "Dr Priya Shah", "priya.shah@uhl-tr.nhs.uk",
        "***** For use by MBP *****", "Images 'fixed up' by",
    ):
        assert expected in text, expected


@pytest.mark.parametrize("kind", ["import", "export", "cd"])
def test_mbp_box_shows_what_the_service_desk_recorded(client, requester, kind):
    call_ref = submit(client, kind)
    blank = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    assert "NTT-558201" not in blank
    req = request_row(call_ref)
    req.mbp_call_ref = "NTT-558201"
    req.imaging_uploaded_by = "A. Analyst"
    req.images_fixed_up_by = "B. Fixer"
    req.date_imaging_sent = date(2026, 2, 3)
    db.session.commit()
    text = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    mbp = text[text.index("***** For use by MBP *****") :]
    assert "NTT (Offshore team) Call ref NTT-558201" in mbp
    assert "Imaging up loaded by A. Analyst" in mbp
    if kind == "export":
        assert "Date Imaging sent 03/02/2026" in mbp
    else:
        assert "Images 'fixed up' by B. Fixer" in mbp


def test_pdf_is_shown_inline_named_by_call_ref_only_and_not_cached(client, requester):
    call_ref = submit(client, "cd")
    for name in ("form.pdf", "label.pdf"):
        response = client.get(f"/requests/{call_ref}/{name}")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Disposition"] == f'inline; filename="{call_ref}-{name}"'
        assert response.headers["Cache-Control"] == "no-store"
        # Chrome's PDF viewer is an <embed>: object-src 'none' would blank the page.
        assert "object-src 'none'" not in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        # The document's title (shown by PDF viewers) carries no patient data either.
        title = PdfReader(BytesIO(response.data)).metadata.title
        assert title.startswith(call_ref) and "Smith" not in title.title()


def test_each_pdf_download_is_audited(client, requester):
    call_ref = submit(client, "cd")
    assert downloads() == []
    client.get(f"/requests/{call_ref}/form.pdf")
    client.get(f"/requests/{call_ref}/label.pdf")
    client.get(f"/requests/{call_ref}/form.pdf")
    assert downloads() == [f"{call_ref} form.pdf", f"{call_ref} label.pdf", f"{call_ref} form.pdf"]
    rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "download_pdf")).all()
    assert {(row.user_id, row.request_id) for row in rows} == {(requester.id, request_row(call_ref).id)}


# --- Who may print what ---------------------------------------------------------------


def test_a_requester_cannot_print_another_requesters_request(app, client, login_as, make_user, pas_patients):
    owner = make_user("requester")
    owners_browser = app.test_client()
    post_form(owners_browser, "/login", {"email": owner.email, "password": "correct-horse-9"})
    call_ref = submit(owners_browser, "cd")
    login_as("requester")  # someone else, on another browser
    assert client.get(f"/requests/{call_ref}/form.pdf").status_code == 403
    assert client.get(f"/requests/{call_ref}/label.pdf").status_code == 403
    assert downloads() == []
    desk = app.test_client()  # the service desk sees every request
    analyst = make_user("analyst")
    post_form(desk, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    assert desk.get(f"/requests/{call_ref}/form.pdf").status_code == 200
    assert owners_browser.get(f"/requests/{call_ref}/label.pdf").status_code == 200


def test_labels_exist_only_for_cd_requests(client, requester):
    call_ref = submit(client, "import")
    assert client.get(f"/requests/{call_ref}/label.pdf").status_code == 404
    assert client.get("/requests/IEP-2020-999999/form.pdf").status_code == 404
    assert downloads() == []


def test_pdfs_need_sign_in(client):
    response = client.get("/requests/IEP-2026-000001/form.pdf")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


# --- CD labels (Appendix 5) ------------------------------------------------------------


@pytest.fixture
def christmas_eve_2024() -> Iterator[None]:
    """Tuesday 24 Dec 2024: Wednesday is Christmas Day, Thursday Boxing Day."""
    with freeze(datetime(2024, 12, 24, 10, 0, tzinfo=UTC)):
        yield


def test_cd_labels_one_per_cd_plus_the_envelope(client, requester, christmas_eve_2024):
    call_ref = submit(client, "cd", cd_count="2", drop_off_site="LRI")
    pages = pdf_pages(client.get(f"/requests/{call_ref}/label.pdf"))
    assert len(pages) == 1
    text = pages[0]
    assert text.count("Envelope – 2 CDs") == 1
    assert re.findall(r"CD (\d+) of (\d+)", text) == [("1", "2"), ("2", "2")]
    labels = 3
    assert text.count(call_ref) >= labels
    assert text.count("SMITH, Margaret") == labels and text.count("S1234567") == labels
    assert text.count("Radiology Reception, Leicester Royal Infirmary") == labels
    # Christmas Day and Boxing Day are bank holidays: collection moves to Friday.
    assert text.count("Next collection: Friday 27 December 2024") == labels
    assert "Cut along the dashed lines" in text


def test_cd_labels_continue_onto_more_pages(client, requester):
    call_ref = submit(client, "cd", cd_count="12", drop_off_site="LGH")
    pages = pdf_pages(client.get(f"/requests/{call_ref}/label.pdf"))
    assert len(pages) == 2
    per_page = [re.findall(r"CD (\d+) of 12", page) for page in pages]
    assert [int(n) for page in per_page for n in page] == list(range(1, 13))
    assert "Envelope – 12 CDs" in pages[0]
    assert all(call_ref in page and "Radiology Reception, Leicester General Hospital" in page for page in pages)


def test_single_cd_envelope_label_says_one_cd(client, requester):
    call_ref = submit(client, "cd", cd_count="1")
    text = pdf_text(client.get(f"/requests/{call_ref}/label.pdf"))
    assert re.search(r"Envelope – 1 CD\b(?!s)", text)
    assert re.findall(r"CD (\d+) of (\d+)", text) == [("1", "1")]


def _svg_modules(svg: str) -> set[tuple[int, int]]:
    """The dark modules drawn by segno's SVG path (`M x y`, relative `m dx dy`, `h n`)."""
    path = re.search(r'<path[^>]*\sd="([^"]+)"', svg).group(1)
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for op, args in re.findall(r"([Mmh])([-\d. ]+)", path):
        numbers = [float(n) for n in args.split()]
        if op == "M":
            x, y = numbers
        elif op == "m":
            x, y = x + numbers[0], y + numbers[1]
        else:
            dark.update((int(x + i), int(y)) for i in range(int(numbers[0])))
            x += numbers[0]
    return dark


def test_label_qr_code_is_a_full_qr_of_the_call_reference(client, requester, rendered_html):
    call_ref = submit(client, "cd", cd_count="1")
    response = client.get(f"/requests/{call_ref}/label.pdf")
    assert response.status_code == 200
    (html,) = rendered_html
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(svgs) == 2  # envelope + 1 CD, drawn as vectors (sharp on any printer)
    expected = segno.make_qr(call_ref, error="m")
    assert not expected.is_micro  # Micro QR is not read by phone cameras or most scanners
    border = 4
    want = {
        (col + border, row + border)
        for row, line in enumerate(expected.matrix)
        for col, module in enumerate(line)
        if module
    }
    for svg in svgs:
        assert _svg_modules(svg) == want
    # WeasyPrint drew both: each horizontal run of dark modules became a line segment.
    content = PdfReader(BytesIO(response.data)).pages[0].get_contents().get_data()
    runs = re.search(r'\sd="([^"]+)"', svgs[0]).group(1).count("h")
    assert len(re.findall(rb"[-\d.]+ [-\d.]+ l\b", content)) >= 2 * runs


# --- The renderer is locked down -------------------------------------------------------


def test_markup_typed_into_a_form_is_printed_as_text_and_never_fetched(client, requester, fetched, pas_patients):
    # The register's given name is what is saved (issue 13.8): markup characters in it.
    pas_patients[0].given_name = "Margaret <&>"
    db.session.commit()
    call_ref = submit(
        client,
        "cd",
        given_name="Margaret <&>",
        comments=MARKUP,
        internal_post_address='<link rel="stylesheet" href="file:///etc/passwd">',
    )
    form = pdf_text(client.get(f"/requests/{call_ref}/form.pdf"))
    labels = pdf_text(client.get(f"/requests/{call_ref}/label.pdf"))
    assert MARKUP in form
    assert "SMITH, Margaret <&>" in form and "SMITH, Margaret <&>" in labels
    assert '<link rel="stylesheet" href="file:///etc/passwd">' in form
    # Only our stylesheet was asked for, once per document.
    assert fetched == [f"{STATIC_ORIGIN}/static/css/pdf.css"] * 2


@pytest.fixture
def fetcher(app) -> StaticOnlyFetcher:
    return StaticOnlyFetcher(app.static_folder, app.static_url_path)


def test_fetcher_serves_our_static_files(app, fetcher):
    response = fetcher.fetch(f"{STATIC_ORIGIN}/static/css/pdf.css")
    assert response.content_type == "text/css"
    assert response.read() == (Path(app.static_folder) / "css" / "pdf.css").read_bytes()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:9/x", id="plain_http"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="cloud_metadata"),
        pytest.param("https://evil.example/static/css/pdf.css", id="https_other_host"),
        pytest.param("http://iep-desk.invalid/static/css/pdf.css", id="our_host_over_http"),
        pytest.param("file:///etc/passwd", id="file_outside"),
        pytest.param("file://STATIC/css/pdf.css", id="file_even_inside_static"),
        pytest.param("ftp://127.0.0.1/x", id="ftp"),
        pytest.param("data:text/css,body{}", id="data_url"),
        pytest.param(STATIC_ORIGIN + "/static/../__init__.py", id="dotdot_out_of_static"),
        pytest.param(STATIC_ORIGIN + "/static/%2e%2e/__init__.py", id="encoded_dotdot"),
        pytest.param(STATIC_ORIGIN + "/static/css/../../../wsgi.py", id="deep_dotdot"),
        pytest.param(STATIC_ORIGIN + "/static/%2Fetc%2Fpasswd", id="encoded_absolute_path"),
        pytest.param(STATIC_ORIGIN + "/app/__init__.py", id="outside_static_prefix"),
        pytest.param(STATIC_ORIGIN + "/static/css", id="directory"),
        pytest.param(STATIC_ORIGIN + "/static/css/missing.css", id="missing_file"),
        pytest.param(STATIC_ORIGIN + "/static/css/pdf.css?x=1", id="query_string"),
    ],
)
def test_fetcher_refuses_everything_else(app, fetcher, monkeypatch, url):
    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the fetcher opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(RefusedURL):
        fetcher.fetch(url.replace("STATIC", app.static_folder))


def test_render_pdf_refuses_a_template_that_would_not_be_autoescaped(app):
    with app.test_request_context(), pytest.raises(ValueError, match="autoescape"):
        render.render_pdf("pdf/labels.txt")


# --- Next CD collection (Appendix 5: every Wednesday, LRI / GH / LGH) -----------------


def test_bank_holidays_used_below_are_real():
    england = holidays.country_holidays("GB", subdiv="ENG", years=[2024, 2025, 2030])
    for day in (date(2024, 12, 25), date(2024, 12, 26), date(2025, 1, 1), date(2030, 12, 25), date(2030, 12, 26)):
        assert day in england, day
    assert date(2024, 12, 25).weekday() == date(2030, 12, 25).weekday() == date(2025, 1, 1).weekday() == 2


@pytest.mark.parametrize(
    ("today", "collection"),
    [
        pytest.param(date(2026, 7, 13), date(2026, 7, 15), id="monday_goes_to_that_weeks_wednesday"),
        pytest.param(date(2026, 7, 14), date(2026, 7, 15), id="tuesday_goes_to_the_next_day"),
        pytest.param(date(2026, 7, 15), date(2026, 7, 22), id="wednesday_goes_to_the_following_wednesday"),
        pytest.param(date(2026, 7, 16), date(2026, 7, 22), id="thursday_goes_to_next_wednesday"),
        pytest.param(date(2026, 7, 19), date(2026, 7, 22), id="sunday_goes_to_the_wednesday_after"),
        pytest.param(date(2025, 12, 31), date(2026, 1, 7), id="across_the_new_year"),
        pytest.param(date(2024, 12, 24), date(2024, 12, 27), id="christmas_wednesday_then_boxing_day_moves_to_friday"),
        pytest.param(date(2030, 12, 24), date(2030, 12, 27), id="christmas_2030_wednesday_moves_to_friday"),
        pytest.param(date(2024, 12, 31), date(2025, 1, 2), id="new_years_day_wednesday_moves_to_thursday"),
        pytest.param(date(2024, 12, 25), date(2025, 1, 2), id="on_christmas_day_next_is_after_new_years_day"),
    ],
)
def test_next_collection_date(today, collection):
    assert next_collection_date(today) == collection


def test_collection_is_always_a_working_day_within_ten_days():
    day = date(2018, 1, 1)
    while day < date(2036, 1, 1):
        collection = next_collection_date(day)
        assert is_working_day(collection) and day < collection <= day + timedelta(days=10), day
        day += timedelta(days=1)
