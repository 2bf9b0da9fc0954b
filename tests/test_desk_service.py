"""`desk.service.apply_edit`: the inline edit as plain values (issue 9.5). It never commits:
the view commits once, or rolls back on a refusal."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.desk.service import EditValues, StaleEdit, apply_edit
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.workflow.machine import TransitionRefused


@pytest.fixture
def new_request(app, make_user, pas_patients) -> Request:
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "contact_name": "Dr Shah", "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk",
               "internal_post_address": "Ward 7", "cd_count": 1, "drop_off_site": "LRI"}
    req = create_request(RequestValues(kind=Kind.CD, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), make_user("requester"))
    db.session.commit()
    return req


def _edits(req: Request) -> list[str]:
    return list(db.session.scalars(sa.select(AuditEvent.detail).where(
        AuditEvent.request_id == req.id, AuditEvent.action == "edit")))


def test_apply_edit_sets_fields_and_assignee_audits_them_and_does_not_commit(new_request, make_user):
    analyst = make_user("analyst")
    values = EditValues(version=str(new_request.version), status=Status.COLLECTED.value, assigned_to=str(analyst.id),
                        mbp_call_ref="  NTT-1 ", date_imaging_sent=date(2026, 2, 1))
    changed = apply_edit(new_request, values, actor_id=analyst.id)
    assert changed == ["mbp_call_ref", "date_imaging_sent", "assigned_to"]
    assert new_request.mbp_call_ref == "NTT-1" and new_request.status == Status.COLLECTED
    assert _edits(new_request) == [f"{new_request.call_ref} changed mbp_call_ref, date_imaging_sent, assigned_to"]
    db.session.rollback()  # it did not commit: the caller's rollback undoes all of it
    assert new_request.status == Status.AWAITING_DROP_OFF
    assert new_request.assigned_to_id is None and _edits(new_request) == []


def test_an_unchanged_edit_records_nothing(new_request, make_user):
    analyst = make_user("analyst")
    assert apply_edit(new_request, EditValues(version=str(new_request.version), status=""), actor_id=analyst.id) == []
    assert _edits(new_request) == []


def test_a_stale_version_is_refused_before_anything_changes(new_request, make_user):
    with pytest.raises(StaleEdit):
        apply_edit(new_request, EditValues(version=str(new_request.version - 1), status="", mbp_call_ref="X"),
                   actor_id=make_user("analyst").id)
    assert new_request.mbp_call_ref == "" and new_request not in db.session.dirty


def test_a_refused_status_raises_for_the_caller_to_roll_back(new_request, make_user):
    values = EditValues(version=str(new_request.version), status=Status.DELIVERED.value, mbp_call_ref="X")
    with pytest.raises(TransitionRefused):
        apply_edit(new_request, values, actor_id=make_user("analyst").id)
