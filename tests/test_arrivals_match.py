"""Matching an arrived study to an import request on /desk/arrivals: the match, its audit
entry and the request's On IEP are saved by one commit (README "Layout")."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.timeutil import utcnow
from app.transfers.models import InboundStudy
from app.workflow.machine import transition
from tests.conftest import csrf_token, post_form


def test_matching_a_complete_study_saves_the_match_its_audit_and_on_iep_together(app, make_user, pas_patients):
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "contact_name": "Dr Shah", "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk",
               "institution_name": "Leeds", "priority": "Standard", "requesting_clinician": "Dr Shah",
               "consultant": "Dr Jones", "department": "Radiology"}
    req = create_request(RequestValues(kind=Kind.IMPORT, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), make_user("requester"))
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    study = InboundStudy(study_uid="1.2.826.0.1.3680043.8.498.401", sender_ae="LEEDS", complete_at=utcnow())
    db.session.add(study)
    db.session.commit()
    call_ref, study_id = req.call_ref, study.id
    analyst = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    token = csrf_token(browser, "/desk")
    answer = browser.post("/desk/arrivals", data={"csrf_token": token, "study_id": str(study_id),
                                                  "call_ref": call_ref.lower()})
    assert answer.status_code == 302 and answer.headers["Location"] == "/desk/arrivals"
    db.session.expire_all()
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    assert db.session.get(InboundStudy, study_id).request_id == req.id and req.status == Status.ON_IEP
    assert f"{call_ref} matched to arrived study" in db.session.scalars(sa.select(AuditEvent.detail)).all()


def test_an_unknown_call_reference_matches_nothing(app, make_user):
    study = InboundStudy(study_uid="1.2.826.0.1.3680043.8.498.402", complete_at=utcnow())
    db.session.add(study)
    db.session.commit()
    study_id = study.id
    analyst = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    answer = browser.post("/desk/arrivals", data={"csrf_token": csrf_token(browser, "/desk"), "study_id": str(study_id),
                                                  "call_ref": "IEP-NONE"})
    assert answer.status_code == 302
    assert "No import request has that call reference." in browser.get("/desk/arrivals").get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(InboundStudy, study_id).request_id is None
