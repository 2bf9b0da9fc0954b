"""`transfers.service.plan_start` and `start_transfer`: the Send button's work as services
taking plain values (issue 9.5), and how the Send route says a refusal. Nothing here runs a
transfer or talks to Redis."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from pypdf import PdfWriter

from app.audit import AuditEvent
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind, Priority, Status
from app.transfers import service
from app.transfers.models import Direction, Transfer
from app.transfers.nodes import upsert_node

STUDY = "1.2.826.0.1.3680043.8.498.301"


def _pdf(pages: int = 1, password: str = "") -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(595, 842)
    if password:
        writer.encrypt(password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PDF = _pdf()


def _request(kind: Kind, patient, requester):  # noqa: ANN001, ANN202
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "contact_name": "Dr Shah", "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk",
               "institution_name": "Leeds", "priority": "Blue Light", "priority_reason": "Inpatient admission"}
    req = create_request(RequestValues(kind=kind, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), requester)
    db.session.commit()
    return req


@pytest.fixture
def nodes(app):  # noqa: ANN201
    pacs = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    leeds = upsert_node("Leeds PACS", "LEEDS", "127.0.0.1", 11113, "remote")
    db.session.commit()
    return pacs, leeds


@pytest.fixture
def export(app, make_user, pas_patients, nodes):  # noqa: ANN201
    return _request(Kind.EXPORT, pas_patients[0], make_user("requester"))


@pytest.mark.parametrize(("values", "message"), [
    ({"study_uids": ("1.2.3",), "source_id": 999}, None),  # an unknown source: the local PACS
    ({"study_uids": ("not-a-uid",)}, "Tick at least one study to send."),
    ({"study_uids": ("1.2.3",), "dest_id": None}, "Choose the destination node."),
    ({"study_uids": ("1.2.3",), "report_pdf": b"<html>"}, "The report is not a PDF file"),
    ({"study_uids": ("1.2.3",), "report_pdf": b""}, "The report file is empty"),
    ({"study_uids": ("1.2.3",), "report_pdf": PDF + b"x" * service.MAX_REPORT_BYTES},
     "The report PDF is larger than 10 MB"),
    ({"study_uids": ("1.2.3",), "report_pdf": b"%PDF-1.4 a report"}, "The report PDF is damaged and cannot be read"),
    ({"study_uids": ("1.2.3",), "report_pdf": PDF[:60]}, "The report PDF is damaged and cannot be read"),
    ({"study_uids": ("1.2.3",), "report_pdf": _pdf(password="secret")}, "The report PDF is password-protected"),
    ({"study_uids": ("1.2.3",), "report_pdf": _pdf(pages=0)}, "The report PDF has no pages"),
], ids=["unknown_source_means_local_pacs", "uids_are_digits_and_dots", "export_needs_a_destination",
        "report_must_be_a_pdf", "empty_report_refused", "report_over_10_mb_refused", "pdf_header_only_refused",
        "truncated_pdf_refused", "password_protected_pdf_refused", "pdf_without_pages_refused"])
def test_plan_start_refuses_in_the_analysts_words(export, nodes, values, message):
    values = {"dest_id": nodes[1].id, **values}
    if message is None:
        assert service.plan_start(export, service.StartValues(**values)).source.id == nodes[0].id
        return
    with pytest.raises(service.StartRefused, match=message):
        service.plan_start(export, service.StartValues(**values))


def test_an_import_pulls_to_the_gateway_and_needs_its_source(app, make_user, pas_patients, nodes):
    req = _request(Kind.IMPORT, pas_patients[0], make_user("requester"))
    with pytest.raises(service.StartRefused, match="Choose the node to take the studies from."):
        service.plan_start(req, service.StartValues(study_uids=(STUDY,)))
    plan = service.plan_start(req, service.StartValues(study_uids=(STUDY,), source_id=nodes[1].id))
    assert (plan.direction, plan.dest, plan.priority) == (Direction.PULL, None, Priority.BLUE_LIGHT)


def test_start_stores_the_report_under_our_own_name_and_the_caller_commits(export, nodes, make_user):
    plan = service.plan_start(export, service.StartValues(
        study_uids=(STUDY, "junk"), source_id=nodes[0].id, dest_id=nodes[1].id, priority="Nonsense",
        report_text="  Report text  ", report_pdf=PDF))
    assert plan.study_uids == [STUDY] and plan.priority == Priority.BLUE_LIGHT and plan.report_text == "Report text"
    assert Path(plan.report_pdf_path).read_bytes() == PDF and Path(plan.report_pdf_path).parent.name == "reports"
    analyst = make_user("analyst")
    transfer = service.start_transfer(export, plan, analyst.id)
    assert transfer.report_pdf_path == plan.report_pdf_path and export.status == Status.DOWNLOAD_REQUEST
    assert db.session.scalar(sa.select(AuditEvent.detail).where(AuditEvent.action == "transfer")) == (
        f"{export.call_ref} transfer {transfer.id} started")
    db.session.rollback()
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id))) == 0
    service.discard_report(plan)
    assert not Path(plan.report_pdf_path).exists()


def test_a_second_start_of_the_same_studies_is_under_way(export, nodes, make_user):
    plan = service.plan_start(export, service.StartValues(study_uids=(STUDY,), dest_id=nodes[1].id))
    analyst = make_user("analyst")
    first = service.start_transfer(export, plan, analyst.id)
    db.session.commit()
    with pytest.raises(service.TransferUnderWay) as under_way:
        service.start_transfer(export, plan, analyst.id)
    assert under_way.value.transfer.id == first.id


def test_a_refused_send_from_the_page_is_said_beside_the_button_and_keeps_the_form(
    client, login_as, export, nodes):  # noqa: ANN001
    """From the search results (htmx), a refusal is a 422 fragment for the space beside
    the button: the form (ticks, report, file) stays as the analyst left it, nothing is
    started. Without script, the plain post goes back to the page with the same words."""
    from tests.conftest import csrf_token

    login_as("analyst")
    token = csrf_token(client, f"/requests/{export.call_ref}")
    data = {"csrf_token": token, "source_id": str(nodes[0].id), "dest_id": str(nodes[1].id),
            "priority": "Standard", "report_text": "<b>Report</b>"}
    refused = client.post(f"/requests/{export.call_ref}/transfers", data=data, headers={"HX-Request": "true"})
    assert refused.status_code == 422 and "HX-Redirect" not in refused.headers
    assert refused.get_data(as_text=True) == "Tick at least one study to send."
    data["report_pdf"] = (io.BytesIO(b"<script>x</script>"), "report<i>.pdf")
    data["study_uid"] = STUDY
    refused = client.post(f"/requests/{export.call_ref}/transfers", data=data, headers={"HX-Request": "true"},
                          content_type="multipart/form-data")
    assert refused.status_code == 422
    assert refused.get_data(as_text=True) == "The report is not a PDF file: attach the report as a PDF."
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id))) == 0
    del data["report_pdf"], data["study_uid"]
    plain = client.post(f"/requests/{export.call_ref}/transfers", data=data, follow_redirects=True)
    assert "Tick at least one study to send." in plain.get_data(as_text=True)
    assert db.session.scalar(sa.select(sa.func.count(Transfer.id))) == 0
