"""`transfers.search.find_patient_studies`: the PACS search box makes one call to
`scu.find_studies`, which merges by Study Instance UID (issue 9.5). The C-FIND itself is
tested against Orthanc in test_dicom_scu.py and test_transfers.py."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from app.dicom import scu
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind
from app.transfers.models import Transfer
from app.transfers.nodes import upsert_node
from app.transfers.search import StudyFilters, find_patient_studies
from tests.conftest import csrf_token, post_form


def _request(kind: Kind, patient, requester):  # noqa: ANN001, ANN202
    answers = {"s_number": patient.s_number, "nhs_number": patient.nhs_number or "", "family_name": "Smith",
               "given_name": "Margaret", "dob": patient.dob, "contact_name": "Dr Shah", "contact_phone": "0116",
               "contact_email": "shah@uhl-tr.nhs.uk", "institution_name": "Leeds", "priority": "Standard"}
    return create_request(RequestValues(kind=kind, patient=patient, answers=answers,
                                        exams=((date(2026, 1, 2), "CT head", ""),)), requester)


@pytest.fixture
def calls(monkeypatch) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []

    def find_studies(node, **criteria):  # noqa: ANN001, ANN003, ANN202
        seen.append({"ae_title": node.ae_title, **criteria})
        return [scu.StudySummary(study_uid="1.2.3", study_date="20260102", description="CT head", modalities=("CT",),
                                 n_instances=1, accession="", patient_id="S1234567", patient_name="SMITH^MARGARET")]

    monkeypatch.setattr(scu, "find_studies", find_studies)
    return seen


def test_an_import_is_searched_by_s_number_nhs_number_and_name_with_birth_date_in_one_call(
    app, make_user, pas_patients, calls,
):
    req = _request(Kind.IMPORT, pas_patients[0], make_user("requester"))
    node = upsert_node("NUH PACS", "NUHPACS", "127.0.0.1", 11113, "remote")
    found = find_patient_studies(node, req, StudyFilters(date_from=date(2025, 1, 1), modality="CT"))
    assert [s.study_uid for s in found] == ["1.2.3"]
    assert len(calls) == 1
    call = calls[0]
    assert (call["ae_title"], call["patient_id"], call["nhs_number"]) == ("NUHPACS", "S1234567", "9990000018")
    assert (call["family_name"], call["birth_date"]) == ("SMITH", date(1948, 3, 14))
    assert (call["date_from"], call["date_to"], call["modality"], call["description"], call["accession"]) == (
        date(2025, 1, 1), None, "CT", None, None)


def test_an_export_is_searched_by_our_ids_only_and_no_nhs_number_is_left_out(app, make_user, pas_patients, calls):
    req = _request(Kind.EXPORT, pas_patients[2], make_user("requester"))  # O'Brien has no NHS number
    node = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    find_patient_studies(node, req, StudyFilters())
    assert len(calls) == 1
    call = calls[0]
    assert (call["patient_id"], call["nhs_number"], call["family_name"], call["birth_date"]) == (
        "S0000003", None, None, None)


# --- The results as AM radiology reads them (issue 13.10) ----------------------------------------


def _found(monkeypatch, *studies: scu.StudySummary) -> None:
    monkeypatch.setattr(scu, "find_studies", lambda node, **criteria: list(studies))


HEAD = scu.StudySummary(study_uid="1.2.826.0.1.3", study_date="20260102", description="CT HEAD", modalities=("CT",),
                        n_instances=120, accession="UHL1", patient_id="S1234567", patient_name="SMITH^MARGARET^ANN",
                        patient_birth_date="19480314")
CHEST = scu.StudySummary(study_uid="1.2.826.0.1.4", study_date="20250101", description="XR CHEST", modalities=("DX",),
                         n_instances=2, accession="UHL2", patient_id="S1234567", patient_name="SMITH^MARGARET",
                         patient_birth_date="19480314")


def _signed_in(app, make_user):  # noqa: ANN001, ANN202
    browser = app.test_client()
    post_form(browser, "/login", {"email": make_user("am_radiology").email, "password": "correct-horse-9"})
    return browser


def _search(app, make_user, req, **form: str):  # noqa: ANN001, ANN202
    browser = _signed_in(app, make_user)
    token = csrf_token(browser, f"/requests/{req.call_ref}")
    return browser.post(f"/requests/{req.call_ref}/pacs-search", data={"csrf_token": token, **form},
                        headers={"HX-Request": "true"})


def test_results_show_names_and_dates_as_people_read_them_and_tick_the_study_the_form_names(
    app, make_user, pas_patients, monkeypatch,
):
    req = _request(Kind.EXPORT, pas_patients[0], make_user("requester"))  # its exam line: 02/01/2026 CT head
    upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    db.session.commit()
    _found(monkeypatch, HEAD, CHEST)
    answer = _search(app, make_user, req)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert "SMITH, Margaret Ann (S1234567, born 14/03/1948)" in html and "SMITH^MARGARET" not in html
    assert ">02/01/2026<" in html and ">01/01/2025<" in html and "20260102<" not in html
    # The exam line's study is ticked in advance; the other is left for AM radiology to choose.
    assert f'value="{HEAD.study_uid}" id="study-1" checked' in html
    assert f'value="{CHEST.study_uid}" id="study-2">' in html
    beside = html.split('class="exam-lines"', 1)[1]
    assert "02/01/2026</strong> CT head" in beside and "✓ Ticked: 02/01/2026 CT HEAD" in beside
    assert "2 studies found; 1 matching the request's examinations, ticked." in html


def test_an_exam_line_no_study_matches_says_so(app, make_user, pas_patients, monkeypatch):
    req = _request(Kind.EXPORT, pas_patients[0], make_user("requester"))
    upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    db.session.commit()
    _found(monkeypatch, CHEST)
    html = _search(app, make_user, req).get_data(as_text=True)
    assert " checked" not in html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert "No study here matches: widen the search, or ask the requester." in html


def test_a_cd_request_has_no_pacs_search_and_the_server_refuses_one(app, make_user, pas_patients, monkeypatch):
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "address_line1": "12 Welford Road", "postcode": "LE2 7AA", "contact_name": "Dr Shah",
               "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk", "cd_count": 1,
               "drop_off_site": "LRI", "internal_post_address": "Ward 7"}
    req = create_request(RequestValues(kind=Kind.CD, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), make_user("requester"))
    pacs = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    db.session.commit()
    _found(monkeypatch, HEAD)
    answer = _search(app, make_user, req, node_id=str(pacs.id))
    assert answer.status_code == 409
    assert "The PACS search does not apply to it." in answer.get_data(as_text=True)
    assert HEAD.study_uid not in answer.get_data(as_text=True)
    browser = _signed_in(app, make_user)
    page = browser.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert "Search the local PACS" not in page and "pacs-search" not in page
    sent = browser.post(f"/requests/{req.call_ref}/transfers", data={
        "csrf_token": csrf_token(browser, f"/requests/{req.call_ref}"), "study_uid": HEAD.study_uid,
        "source_id": str(pacs.id), "dest_id": str(pacs.id), "priority": "Standard"})
    assert sent.status_code == 302
    assert "A CD import&#39;s images come from its CDs" in browser.get(sent.headers["Location"]).get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id))) == 0
