"""Names in other scripts print as letters, not boxes (issue 13.11).

Every PDF the desk makes — the import, export and CD request forms, the CD labels, the
collection chart and the report sent with an export — is rendered for the demo patients
山田 花子 (Japanese) and ΠΑΠΑΔΟΠΟΥΛΟΣ Γιώργος (Greek). Each is checked three ways: the
text a person would copy holds the names (pdftotext); no glyph drawn is .notdef or blank
(tests/pdf_glyphs.py reads the content streams, because a PDF's text layer names the
letters even when the page shows boxes); and no word runs into another or off the page,
so the columns still hold the wider letters. A picture of each goes to
test-artifacts/pdf-<name>-ja-el.png for a person to look at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pypdf import PdfReader, PdfWriter

from app.demo import demo_patients
from app.extensions import db
from app.patients.models import Patient
from app.printing.collections import next_collection_date
from app.timeutil import local_today
from app.transfers.report import report_pdf_bytes
from tests.conftest import post_form
from tests.forms_data import valid_cd, valid_export, valid_import
from tests.pdf_glyphs import (
    Word,
    ink_in_side_margins,
    missing_glyphs,
    pdffonts,
    pdftotext,
    require_fonts,
    words,
    write_png,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
FORMS = {
    "import": ("/requests/new/import", valid_import),
    "export": ("/requests/new/export", valid_export),
    "cd": ("/requests/new/cd", valid_cd),
}
JA, EL = "S1000006", "S1000007"
NAMES = {JA: "山田, 花子", EL: "ΠΑΠΑΔΟΠΟΥΛΟΣ, Γιώργος"}  # as the desk prints a name: FAMILY, Given


@pytest.fixture(autouse=True)
def fonts_installed() -> None:
    require_fonts()


@pytest.fixture
def registered(app) -> dict[str, dict[str, object]]:
    """The Japanese and the Greek demo patient, on the PAS register."""
    patients = {str(p["s_number"]): p for p in demo_patients() if p["s_number"] in (JA, EL)}
    assert set(patients) == {JA, EL}
    db.session.add_all(Patient(**values) for values in patients.values())
    db.session.commit()
    return patients


def submit(client, kind: str, patient: dict[str, object], **changes: str) -> str:
    """A valid request of `kind` for `patient`, sent through its form; the call reference."""
    url, data = FORMS[kind]
    form = {**data(), "s_number": str(patient["s_number"]), "nhs_number": str(patient["nhs_number"]),
            "family_name": str(patient["family_name"]), "given_name": str(patient["given_name"]),
            "dob": patient["dob"].isoformat(), "gender": str(patient["gender"]),
            "address_line1": str(patient["address_line1"]), "town": str(patient["town"]),
            "postcode": str(patient["postcode"]), **changes}
    response = post_form(client, url, form)
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    return re.search(r"/requests/(IEP-\d{4}-\d{6})", response.headers["Location"]).group(1)


def fetch(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.data.startswith(b"%PDF-")
    return response.data


def folded(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def overlapping(found: list[Word]) -> list[tuple[str, str]]:
    """Pairs of words whose boxes overlap: text that ran out of its cell into another."""
    pairs = []
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if a.page != b.page:
                continue
            width = min(a.x_max, b.x_max) - max(a.x_min, b.x_min)
            height = min(a.y_max, b.y_max) - max(a.y_min, b.y_min)
            # A sliver is line spacing or kerning; a fifth of the smaller word is a collision.
            if width > 0 and height > 0 and width * height > 0.2 * min(
                (a.x_max - a.x_min) * (a.y_max - a.y_min), (b.x_max - b.x_min) * (b.y_max - b.y_min)
            ):
                pairs.append((a.text, b.text))
    return pairs


def check_printed(pdf: bytes, *names: str, side_margin_mm: float = 15) -> list[Word]:
    """The names are in the text and drawn with real glyphs; every word is on its page and
    clear of the others, and nothing runs into the side margins. Returns the words, for
    checks on where they stand."""
    text = folded(pdftotext(pdf))
    for name in names:
        assert name in text, f"{name!r} not in the PDF's text: {text[:600]}"
    missing = missing_glyphs(pdf)
    assert not missing, "drawn as boxes: " + ", ".join(f"{g.text!r} ({g.font}, page {g.page})" for g in missing)
    fonts = pdffonts(pdf)
    assert all(font.embedded for font in fonts), fonts
    if any(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", name) for name in names):
        assert any(font.name.startswith("Noto-Sans-CJK-JP") for font in fonts), fonts
    pages, found = words(pdf)
    for word in found:
        page = pages[word.page - 1]
        assert word.x_min >= 0 and word.x_max <= page.width and word.y_min >= 0 and word.y_max <= page.height, word
    assert not overlapping(found), overlapping(found)
    assert ink_in_side_margins(pdf, side_margin_mm) == []
    return found


def side_by_side(first: bytes, second: bytes) -> bytes:
    """Page 1 of each PDF next to each other on one page: one picture of both."""
    a, b = PdfReader(BytesIO(first)).pages[0], PdfReader(BytesIO(second)).pages[0]
    width, height = float(a.mediabox.width), float(a.mediabox.height)
    writer = PdfWriter()
    sheet = writer.add_blank_page(width=2 * width + 20, height=height)
    sheet.merge_translated_page(a, 0, 0)
    sheet.merge_translated_page(b, width + 20, 0)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def picture(pdf: bytes, name: str) -> None:
    path = write_png(pdf, ARTIFACTS / f"pdf-{name}-ja-el.png")
    assert path.stat().st_size > 10_000  # a page with text on it, not a blank


# --- The forms and the labels: one request for each patient ---------------------------------------


@pytest.mark.parametrize("kind", ["import", "export", "cd"])
def test_request_forms_print_japanese_and_greek_names(client, login_as, registered, kind):
    login_as("requester")
    printed = {}
    for s_number, patient in registered.items():
        call_ref = submit(client, kind, patient)
        pdf = fetch(client, f"/requests/{call_ref}/form.pdf")
        check_printed(pdf, NAMES[s_number], s_number, call_ref)
        printed[s_number] = pdf
    picture(side_by_side(printed[JA], printed[EL]), f"form-{kind}")


def test_cd_labels_print_japanese_and_greek_names_inside_each_label(client, login_as, registered):
    login_as("requester")
    printed = {}
    for s_number, patient in registered.items():
        call_ref = submit(client, "cd", patient, cd_count="3")
        pdf = fetch(client, f"/requests/{call_ref}/label.pdf")
        found = check_printed(pdf, NAMES[s_number])
        assert folded(pdftotext(pdf)).count(NAMES[s_number]) == 4  # the envelope and three CDs
        # Each name stays inside its own label: wholly in the left or the right column.
        middle = words(pdf)[0][0].width / 2
        name_words = [w for w in found if w.text in NAMES[s_number].split()]
        assert len(name_words) >= 8, found  # two words on each of four labels
        for word in name_words:
            assert word.x_max < middle or word.x_min > middle, word
        printed[s_number] = pdf
    picture(side_by_side(printed[JA], printed[EL]), "labels")


# --- The collection chart: both patients on one page ----------------------------------------------


def test_collection_chart_prints_both_names_within_the_patient_column(app, client, login_as, make_user, registered):
    login_as("requester")
    refs = {s_number: submit(client, "cd", patient, drop_off_site="LRI") for s_number, patient in registered.items()}
    desk = app.test_client()
    analyst = make_user("analyst")
    assert post_form(desk, "/login", {"email": analyst.email, "password": "correct-horse-9"}).status_code == 302
    day = next_collection_date(local_today())
    pdf = fetch(desk, f"/desk/cds/chart.pdf?site=LRI&date={day.isoformat()}")
    found = check_printed(pdf, *NAMES.values(), *refs.values(), side_margin_mm=12)  # pdf.css: @page chart
    # The patient column runs from its heading to the next column's ("Number of CDs").
    left = next(w for w in found if w.text == "Patient").x_min
    right = next(w for w in found if w.text == "Number").x_min
    for s_number, name in NAMES.items():
        pieces = [w for w in found if w.text in name.split() or w.text == s_number]
        assert len(pieces) >= 3, (name, found)
        for word in pieces:
            assert left - 1 <= word.x_min and word.x_max <= right, (word, left, right)
    picture(pdf, "chart")


# --- The report sent with an export ---------------------------------------------------------------


def test_export_reports_print_japanese_and_greek_text(app):
    reports = {
        JA: "Patient: 山田 花子 (S1000006)\nCT head: no acute intracranial abnormality.\n"
            "頭部CT：急性の頭蓋内異常なし。",
        EL: "Patient: ΠΑΠΑΔΟΠΟΥΛΟΣ Γιώργος (S1000007)\nCT head: no acute intracranial abnormality.\n"
            "Αξονική εγκεφάλου: καμία οξεία ενδοκράνια βλάβη.",
    }
    printed = {}
    for s_number, text in reports.items():
        transfer = SimpleNamespace(report_pdf_path="", report_text=text,
                                   request=SimpleNamespace(call_ref="IEP-2026-000042"))
        with app.test_request_context():
            pdf = report_pdf_bytes(transfer)  # a stand-in with the three attributes it reads
        lines = text.splitlines()
        check_printed(pdf, lines[0], lines[2], "IEP-2026-000042", side_margin_mm=20)  # report.html: 20mm
        printed[s_number] = pdf
    picture(side_by_side(printed[JA], printed[EL]), "report")


# --- The check itself fails where the fonts are missing -------------------------------------------


def test_the_glyph_check_sees_boxes_that_the_text_layer_hides(tmp_path):
    """The bug this module guards against, made again: WeasyPrint with DejaVu only (as the
    desk was before Noto) draws the Japanese name as boxes, yet pdftotext still reads it."""
    dejavu = Path("/usr/share/fonts/truetype/dejavu")
    assert dejavu.is_dir(), "fonts-dejavu-core is missing (scripts/setup installs it)"
    conf = tmp_path / "fonts.conf"
    conf.write_text(f'<?xml version="1.0"?><fontconfig><dir>{dejavu}</dir><cachedir>{tmp_path / "cache"}</cachedir>'
                    "</fontconfig>", encoding="utf-8")
    css = (ROOT / "app" / "static" / "css" / "pdf.css").read_text(encoding="utf-8")
    script = ("import sys\nfrom weasyprint import HTML, CSS\n"
              "sys.stdout.buffer.write(HTML(string=sys.argv[1]).write_pdf(stylesheets=[CSS(string=sys.argv[2])]))\n")
    html = f"<html lang='en-GB'><body><p>{NAMES[JA]} · {NAMES[EL]}</p></body></html>"
    pdf = subprocess.run([sys.executable, "-c", script, html, css], capture_output=True, check=True, timeout=120,  # noqa: S603 - our interpreter, fixed script
                         env={**os.environ, "FONTCONFIG_FILE": str(conf)}).stdout
    assert NAMES[JA] in pdftotext(pdf)  # the text layer claims the name...
    boxes = "".join(glyph.text for glyph in missing_glyphs(pdf))
    assert boxes == "山田花子"  # ...but every Japanese letter is drawn as .notdef; the Greek ones are real
