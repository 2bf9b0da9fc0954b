"""`intake.service.create_request` takes plain values (issue 9.5): no form, no Flask request,
and it leaves the commit to its caller."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status


def _values(patient, kind: Kind = Kind.EXPORT, **answers: object) -> RequestValues:  # noqa: ANN001
    base = {
        "s_number": patient.s_number, "nhs_number": patient.nhs_number or "", "family_name": " Smith ",
        "given_name": "Margaret", "dob": patient.dob, "gender": "Female", "address_line1": "12 Welford Road",
        "postcode": "le2 7aa", "contact_name": "Dr Priya Shah", "contact_phone": "0116 258 4000",
        "contact_email": "priya.shah@uhl-tr.nhs.uk", "institution_name": "Leeds Teaching Hospitals",
        "priority": "Blue Light", "priority_reason": "Inpatient admission", "required_by": date(2027, 1, 4),
        "site_contact_name": "Ann", "site_contact_position": "PACS manager", "site_contact_phone": "0113 000",
        "site_contact_email": "ann@leeds.example", "csrf_token": "ignored", "exams": [{"ignored": True}],
    }
    return RequestValues(kind=kind, patient=patient, answers={**base, **answers},
                         exams=((date(2026, 1, 2), " CT head ", " CHEAD "), (date(2026, 1, 3), "X-ray chest", "")),
                         submission_key="key-1")


def test_create_request_saves_plain_values_and_leaves_the_commit_to_the_caller(app, make_user, pas_patients):
    requester = make_user("requester")
    req = create_request(_values(pas_patients[0]), requester)
    assert req.status == Status.NEW and req.kind == Kind.EXPORT and req.priority == Priority.BLUE_LIGHT
    assert req.family_name == "Smith" and req.postcode == "LE2 7AA" and req.submission_key == "key-1"
    assert req.address_line2 == "" and req.cd_count is None  # fields not given, and other kinds' fields
    assert [(e.exam_date, e.description, e.exam_code) for e in req.exams] == [
        (date(2026, 1, 2), "CT head", "CHEAD"), (date(2026, 1, 3), "X-ray chest", "")]
    assert db.session.scalar(sa.select(AuditEvent.detail).where(AuditEvent.request_id == req.id)) == (
        f"{req.call_ref} export")
    db.session.rollback()  # the caller's refusal: nothing of the request is left behind
    assert db.session.scalar(sa.select(sa.func.count(Request.id))) == 0


def test_a_cd_request_has_standard_priority_and_its_own_fields(app, make_user, pas_patients):
    values = _values(pas_patients[0], Kind.CD, priority=None, internal_post_address="Ward 7", cd_count=2,
                     drop_off_site="LRI")
    req = create_request(values, make_user("requester"))
    assert req.priority == Priority.STANDARD and req.cd_count == 2 and req.institution_name == ""
