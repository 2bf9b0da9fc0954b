"""`transfers.service.act_on`: Retry, Cancel and Confirm as a service that never commits
(issue 9.5). Nothing here runs a transfer or talks to Redis."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.intake.service import RequestValues, create_request
from app.requests.statuses import Kind, Priority
from app.transfers import service
from app.transfers.models import Direction, Transfer, TransferState
from app.transfers.nodes import upsert_node

STUDY = "1.2.826.0.1.3680043.8.498.201"


@pytest.fixture
def export_transfer(app, make_user, pas_patients) -> Transfer:
    patient = pas_patients[0]
    answers = {"s_number": patient.s_number, "family_name": "Smith", "given_name": "Margaret", "dob": patient.dob,
               "contact_name": "Dr Shah", "contact_phone": "0116", "contact_email": "shah@uhl-tr.nhs.uk",
               "institution_name": "Leeds", "priority": "Standard", "priority_reason": "Research",
               "required_by": date(2027, 1, 4)}
    req = create_request(RequestValues(kind=Kind.EXPORT, patient=patient, answers=answers,
                                       exams=((date(2026, 1, 2), "CT head", ""),)), make_user("requester"))
    pacs = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    leeds = upsert_node("Leeds PACS", "LEEDS", "127.0.0.1", 11113, "remote")
    transfer = service.create_transfer(request=req, direction=Direction.OUTBOUND, priority=Priority.STANDARD,
                                       source=pacs, dest=leeds, study_uids=[STUDY], user_id=None, actor="test")
    db.session.commit()
    return transfer


@pytest.fixture
def analyst(make_user):  # noqa: ANN001, ANN201
    return make_user("analyst")


def _audited(transfer: Transfer) -> list[str]:
    return list(db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.action == "transfer")))


def test_cancel_changes_the_row_and_audits_it_and_leaves_the_commit_to_the_caller(export_transfer, analyst):
    service.act_on(export_transfer, "cancel", analyst.id)
    assert export_transfer.state == TransferState.CANCELLED and export_transfer.cancel_requested
    assert _audited(export_transfer) == [f"{export_transfer.request.call_ref} transfer {export_transfer.id} cancel"]
    db.session.rollback()
    assert export_transfer.state == TransferState.QUEUED and _audited(export_transfer) == []


@pytest.mark.parametrize("action", ["retry", "confirm", "delete"])
def test_an_action_that_does_not_apply_is_refused_and_changes_nothing(export_transfer, action, analyst):
    with pytest.raises(service.ActionRefused):
        service.act_on(export_transfer, action, analyst.id)
    assert not db.session.dirty and not db.session.new


def test_confirm_queues_a_transfer_waiting_for_the_patient_check(export_transfer, analyst):
    export_transfer.state = TransferState.WAITING_CONFIRMATION
    db.session.commit()
    service.act_on(export_transfer, "confirm", analyst.id)
    assert export_transfer.state == TransferState.QUEUED and export_transfer.mismatch_accepted


def test_retry_is_refused_while_a_new_send_of_the_same_studies_is_under_way(export_transfer, analyst):
    export_transfer.state = TransferState.FAILED
    db.session.commit()
    again = service.create_transfer(request=export_transfer.request, direction=Direction.OUTBOUND,
                                    priority=Priority.STANDARD, source=export_transfer.source_node,
                                    dest=export_transfer.dest_node, study_uids=[STUDY], user_id=None, actor="test")
    db.session.commit()
    with pytest.raises(service.TransferUnderWay) as under_way:
        service.act_on(export_transfer, "retry", analyst.id)
    assert under_way.value.transfer.id == again.id and export_transfer.state == TransferState.FAILED


def test_retry_queues_a_failed_transfer_from_the_start(export_transfer, analyst):
    export_transfer.state, export_transfer.attempts, export_transfer.last_error = TransferState.FAILED, 3, "refused"
    db.session.commit()
    service.act_on(export_transfer, "retry", analyst.id)
    assert (export_transfer.state, export_transfer.attempts, export_transfer.last_error) == (
        TransferState.QUEUED, 0, "")
