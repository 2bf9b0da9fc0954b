"""`transfers.search.find_patient_studies`: the PACS search box makes one call to
`scu.find_studies`, which merges by Study Instance UID (issue 9.5). The C-FIND itself is
tested against Orthanc in test_dicom_scu.py and test_transfers.py."""

from __future__ import annotations

from datetime import date

import pytest

from app.dicom import scu
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind
from app.transfers.nodes import upsert_node
from app.transfers.search import StudyFilters, find_patient_studies


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
