"""No patient value in any log record (issue 11.6): not when a statement fails in a web
request, not when a transfer job hits an unexpected error.

SQLAlchemy quotes a failed statement's parameters in its message unless the engine hides
them, and PostgreSQL quotes the row itself (`DETAIL: Failing row contains (…, Smith,
Margaret, 1948-03-14, 12 Welford Road, …)`, `Key (s_number)=(S1234567) already exists`):
every record is read with its message, its arguments and its traceback text.
"""

from __future__ import annotations

import logging
import traceback

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.intake import service as intake_service
from app.requests.statuses import Kind
from app.transfers import engine, jobs, service
from app.transfers.models import Direction
from tests.conftest import post_form
from tests.forms_data import valid_import
from tests.test_transfer_start import STUDY, _request, nodes  # noqa: F401 - fixture

# The first PAS patient (tests/conftest.py `pas_patients`) as the forms and the database hold it.
PATIENT_VALUES = ("Smith", "SMITH", "Margaret", "9990000018", "999 000 0018", "1948-03-14", "14/03/1948",
                  "Welford Road", "LE2 7AA", "S1234567")


def everything_logged(records: list[logging.LogRecord]) -> str:
    """Each record as any handler could write it: message, args, exception and stack."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        parts.extend(filter(None, (record.exc_text, record.stack_info)))
    return "\n".join(parts)


def assert_no_patient_value(records: list[logging.LogRecord]) -> None:
    text = everything_logged(records)
    assert records, "the error path logged nothing: the test proves nothing"
    leaked = [value for value in PATIENT_VALUES if value in text]
    assert not leaked, f"patient values {leaked} in the log:\n{text}"


@pytest.fixture
def capture_all(caplog):  # noqa: ANN001, ANN201
    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's included
    return caplog


def test_a_failed_insert_of_a_request_logs_no_patient_value(app, client, login_as, pas_patients, monkeypatch,
                                                            capture_all):
    login_as("requester")
    # No call reference: a NOT NULL violation on the INSERT that carries every patient field.
    monkeypatch.setattr(intake_service, "next_call_ref", lambda year: None)
    capture_all.clear()
    response = post_form(client, "/requests/new/import", valid_import())
    assert response.status_code == 500
    assert "Something went wrong" in response.get_data(as_text=True)
    assert any("unhandled error" in r.getMessage() for r in capture_all.records)
    assert_no_patient_value(capture_all.records)


def test_a_transfer_that_hits_a_database_error_logs_no_patient_value(app, make_user, pas_patients, nodes,  # noqa: F811
                                                                     monkeypatch, capture_all):
    export = _request(Kind.EXPORT, pas_patients[0], make_user("requester"))
    plan = service.plan_start(export, service.StartValues(study_uids=(STUDY,), dest_id=nodes[1].id))
    transfer = service.start_transfer(export, plan, make_user("analyst").id)
    db.session.commit()
    assert transfer.direction == Direction.OUTBOUND

    def duplicate_patient(transfer, progress):  # noqa: ANN001, ANN202
        # A unique violation whose PostgreSQL DETAIL quotes the S number.
        db.session.execute(sa.text(
            "INSERT INTO patients (s_number, nhs_number, family_name, given_name, dob, gender, address_line1,"
            " address_line2, town, county, postcode) VALUES (:s, :nhs, :family, :given, :dob, '', :address, '',"
            " '', '', :postcode)"),
            {"s": "S1234567", "nhs": "9990000018", "family": "SMITH", "given": "Margaret", "dob": "1948-03-14",
             "address": "12 Welford Road", "postcode": "LE2 7AA"})

    monkeypatch.setitem(engine.RUNNERS, transfer.direction, duplicate_patient)
    capture_all.clear()
    with pytest.raises(sa.exc.IntegrityError):
        jobs.run_transfer(transfer.id)
    assert any("unexpected error" in r.getMessage() for r in capture_all.records)
    assert_no_patient_value(capture_all.records)
