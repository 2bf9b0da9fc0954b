"""Uploading a CD's folder in headless Chromium (issue 12.1): the progress bar to the end,
every byte on disk, and a resume after the network dropped and the page was reloaded.
On a failure the page is saved to test-artifacts/<test>.png."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Route, expect

from app.cds import storage
from app.cds.models import CdFile, CdUpload, CdUploadState
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind
from app.timeutil import local_today
from tests.test_browser import PASSWORD, sign_in

pytestmark = pytest.mark.browser

FILES = 30


@pytest.fixture
def cd_request(app, make_user, pas_patients) -> tuple[str, str]:
    """A requester (e-mail) and their CD request (call reference)."""
    requester = make_user("requester", password=PASSWORD)
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "address_line1": "12 Welford Road", "postcode": "LE2 7AA", "contact_name": "Dr Shah",
               "contact_phone": "0116 258 4000", "contact_email": "shah@uhl-tr.nhs.uk", "priority": "Standard",
               "required_by": local_today() + timedelta(days=7), "cd_count": 1, "drop_off_site": "LRI",
               "internal_post_address": "Ward 7"}
    req = create_request(RequestValues(kind=Kind.CD, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", "CHEAD"),)), requester)
    db.session.commit()
    return requester.email, req.call_ref


@pytest.fixture
def cd_folder(tmp_path: Path) -> Path:
    """A CD of 30 small files in two folders (sizes differ; contents name the file)."""
    root = tmp_path / "CD"
    for number in range(FILES):
        folder = root / ("DICOM" if number % 2 else "DICOM/SUB")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IM{number:04d}").write_bytes(f"file {number};".encode() * (50 + 97 * number))
    return root


def _on_disk(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder.parent).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _the_upload() -> CdUpload:
    db.session.rollback()
    db.session.expire_all()
    return db.session.scalars(sa.select(CdUpload).order_by(CdUpload.id.desc())).first()


def _assert_stored(upload: CdUpload, folder: Path) -> None:
    expected = _on_disk(folder)
    files = db.session.scalars(sa.select(CdFile).where(CdFile.upload_id == upload.id)).all()
    assert sorted(f.relpath for f in files) == sorted(expected)
    for f in files:
        assert storage.file_path(upload.id, f.id).read_bytes() == expected[f.relpath], f.relpath


def test_a_requester_uploads_a_cd_folder_and_watches_it_arrive(page, live_url, cd_request, cd_folder):
    email, call_ref = cd_request
    sign_in(page, live_url, email)
    page.goto(f"{live_url}/requests/{call_ref}")
    expect(page.get_by_role("heading", name="CD contents")).to_be_visible()
    seen: list[str] = []
    page.on("console", lambda message: seen.append(message.text))
    # Every text the progress line shows, as it changes.
    page.evaluate("""() => { window.seenProgress = [];
        new MutationObserver(() => { const t = document.getElementById('cd-progress-text');
          if (t) { window.seenProgress.push(t.textContent); } })
        .observe(document.getElementById('cd-progress'), {subtree: true, childList: true, characterData: true}); }""")
    page.get_by_label("Choose the CD's folder").set_input_files(str(cd_folder))
    expect(page.locator("#cd-progress")).to_contain_text(re.compile(r"\d+ of 30 files"))
    expect(page.locator("#cd-progress")).to_contain_text("All 30 files received — scanning", timeout=30_000)
    expect(page.locator("#cd-status")).to_contain_text("All files received")
    assert not [text for text in seen if "error" in text.lower()], seen
    upload = _the_upload()
    assert upload.state == CdUploadState.SCANNING and upload.files_expected == FILES
    assert upload.bytes_received == upload.bytes_expected == sum(map(len, _on_disk(cd_folder).values()))
    _assert_stored(upload, cd_folder)
    shown = page.evaluate("() => window.seenProgress")
    done_counts = [int(m.group(1)) for t in shown if (m := re.match(r"(\d+) of 30 files", t))]
    assert len(set(done_counts)) > 10 and done_counts == sorted(done_counts) and done_counts[-1] == 30, shown
    assert page.locator("#cd-progress-bar").count() == 1


def test_a_dropped_network_then_a_reload_resumes_without_resending_what_arrived(
    page, live_url, cd_request, cd_folder
):
    email, call_ref = cd_request
    sign_in(page, live_url, email)
    page.goto(f"{live_url}/requests/{call_ref}")
    let_through = 12
    puts: list[str] = []

    def network_drops(route: Route) -> None:
        if route.request.method != "PUT":
            route.continue_()
            return
        puts.append(route.request.url)
        if len(puts) <= let_through:
            route.continue_()
        else:
            route.abort("internetdisconnected")

    page.route("**/cd-upload/*/files/*", network_drops)
    page.get_by_label("Choose the CD's folder").set_input_files(str(cd_folder))
    expect(page.locator("#cd-status")).to_contain_text("Connection lost", timeout=20_000)
    expect(page.locator("#cd-progress")).to_contain_text("12 of 30 files")
    upload = _the_upload()
    arrived = {f.id for f in upload.files if f.received == f.size}
    assert len(arrived) == let_through and upload.state == CdUploadState.UPLOADING

    # The tab is reloaded (or closed and opened again); the network is back.
    page.unroute("**/cd-upload/*/files/*")
    page.reload()
    expect(page.locator("#cd-unfinished")).to_have_text(
        "An upload of 30 files is unfinished: choose the same folder to resume.")
    sent_after: list[int] = []
    page.on("request", lambda r: r.method == "PUT" and sent_after.append(int(r.url.split("/files/")[1].split("?")[0])))
    page.get_by_label("Choose the CD's folder").set_input_files(str(cd_folder))
    expect(page.locator("#cd-progress")).to_contain_text("All 30 files received — scanning", timeout=30_000)
    assert sent_after and not set(sent_after) & arrived  # nothing that had arrived was sent again
    assert len(set(sent_after)) == FILES - let_through
    resumed = _the_upload()
    assert resumed.id == upload.id and resumed.state == CdUploadState.SCANNING
    _assert_stored(resumed, cd_folder)
