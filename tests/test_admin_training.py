"""The training register (issue 14.7; guideline section 3): record, list and search, delete a
wrong record after a confirmation, each audited; the staff with a desk role and no training
record, on the page and as CSV."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.audit import AuditEvent
from app.auth.models import User
from app.auth.training import TrainingRecord
from app.extensions import db
from app.timeutil import local_today
from tests.conftest import csrf_token

PAGE = "/admin/training"


def _audit(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _text(response) -> str:  # noqa: ANN001
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))))


def _records() -> list[TrainingRecord]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(TrainingRecord).order_by(TrainingRecord.id)))


def _record(client: FlaskClient, **fields: str):  # noqa: ANN202
    return client.post(PAGE, data={"csrf_token": csrf_token(client, PAGE), **fields})


def _named(make_user, role: str, name: str, email: str) -> User:  # noqa: ANN001
    user = make_user(role, email=email)
    user.name = name
    db.session.commit()
    return user


@pytest.fixture
def admin(client, login_as) -> User:
    return login_as("admin")


def _valid(user: User, **changes: str) -> dict[str, str]:
    return {"trainee": user.email, "trainer": "Sam Lead (MBP Applications)", "trained_on": "2026-01-05",
            "topic": "IEP desk induction", **changes}


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_reaches_the_register(client, login_as, role):
    login_as(role)
    assert client.get(PAGE).status_code == 403
    assert client.get(PAGE + "/untrained.csv").status_code == 403


def test_recording_training_is_audited(client, admin, make_user):
    trainee = _named(make_user, "analyst", "Ann Analyst", "ann@test.uhl")
    answer = _record(client, **_valid(trainee, trainee=" ANN@test.uhl "))
    assert answer.status_code == 302
    [record] = _records()
    assert (record.user_id, record.trainer_name, record.trainer_id, record.trained_on, record.topic,
            record.recorded_by_id) == (trainee.id, "Sam Lead (MBP Applications)", None, date(2026, 1, 5),
                                       "IEP desk induction", admin.id)
    [row] = _audit("training_recorded")
    assert (row.user_id, row.detail) == (
        admin.id,
        f"record {record.id} for user {trainee.id} ann@test.uhl: 'IEP desk induction' on 2026-01-05 by "
        "'Sam Lead (MBP Applications)'")
    page = _text(client.get(answer.headers["Location"]))
    assert "Training recorded for Ann Analyst." in page
    assert "05/01/2026 Ann Analyst ann@test.uhl IEP desk induction Sam Lead (MBP Applications)" in page


def test_a_trainer_given_by_their_desk_address_is_linked_to_their_account(client, admin, make_user):
    trainee = make_user("analyst")
    trainer = _named(make_user, "am_radiology", "Tina Trainer", "tina@test.uhl")
    assert _record(client, **_valid(trainee, trainer="TINA@test.uhl")).status_code == 302
    [record] = _records()
    assert (record.trainer_id, record.trainer_name) == (trainer.id, "Tina Trainer")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        pytest.param({"trainee": "nobody@test.uhl"}, "trainee", "No desk user has this e-mail address",
                     id="trainee_unknown"),
        pytest.param({"trainee": ""}, "trainee", "Enter the e-mail address of the person trained",
                     id="trainee_missing"),
        pytest.param({"trainer": "  "}, "trainer", "Enter who gave the training", id="trainer_missing"),
        pytest.param({"trained_on": "31/02/2026"}, "trained_on", "Enter a date as DD/MM/YYYY", id="date_impossible"),
        pytest.param({"trained_on": (local_today() + timedelta(days=1)).isoformat()}, "trained_on",
                     "cannot be in the future", id="date_in_the_future"),
        pytest.param({"topic": ""}, "topic", "Say what the training was", id="topic_missing"),
        pytest.param({"topic": "t" * 201}, "topic", "longer than 200", id="topic_too_long"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_keeping_what_was_typed(client, admin, make_user, changes, field,
                                                                        message):
    trainee = make_user("analyst")
    data = _valid(trainee, **changes)
    answer = _record(client, **data)
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    error = re.search(rf'id="{field}-error">(.*?)</p>', page, re.S)
    assert error and message in html.unescape(error.group(1)), page[:3000]
    for name, value in data.items():
        if name != field and value.strip():
            assert f'value="{html.escape(value)}"' in page, name
    assert _records() == []
    assert _audit("training_recorded") == []


def test_the_records_are_searched_and_paged(client, admin, make_user):
    ann = _named(make_user, "analyst", "Ann Analyst", "ann@test.uhl")
    bob = _named(make_user, "am_radiology", "Bob Radiology", "bob@test.uhl")
    db.session.add_all([
        TrainingRecord(user_id=ann.id, trainer_name="Sam Lead", trained_on=date(2026, 1, 5),
                       topic="IEP desk induction"),
        TrainingRecord(user_id=bob.id, trainer_name="Cascade: Ann Analyst", trained_on=date(2026, 2, 1),
                       topic="Export searches"),
    ])
    db.session.commit()
    everything = _text(client.get(PAGE))
    assert everything.index("Bob Radiology bob@test.uhl Export") < everything.index("Ann Analyst ann@test.uhl IEP")
    for query, shown, hidden in (("bob@", "Export searches", "IEP desk induction"),
                                 ("sam lead", "IEP desk induction", "Export searches"),
                                 ("EXPORT", "Export searches", "IEP desk induction")):
        found = _text(client.get(PAGE, query_string={"q": query}, headers={"HX-Request": "true"}))  # the rows
        assert shown in found and hidden not in found, query
    assert "No training record matches “100%”" in _text(client.get(PAGE, query_string={"q": "100%"}))
    fragment = client.get(PAGE, query_string={"q": "bob"}, headers={"HX-Request": "true"})
    assert fragment.get_data(as_text=True).lstrip().startswith('<div id="training-list"')
    db.session.add_all(TrainingRecord(user_id=ann.id, trainer_name="Sam Lead", trained_on=date(2025, 1, 1),
                                      topic=f"Refresher {n:02d}") for n in range(60))
    db.session.commit()
    assert "Page 1 of 2 (62 records)" in _text(client.get(PAGE))
    assert "Page 2 of 2 (62 records)" in _text(client.get(PAGE, query_string={"page": "2"}))


def test_a_wrong_record_is_deleted_after_a_confirmation_and_the_audit_keeps_it(client, admin, make_user):
    trainee = _named(make_user, "analyst", "Ann Analyst", "ann@test.uhl")
    _record(client, **_valid(trainee))
    [record] = _records()
    record_id = record.id
    assert f'href="/admin/training/{record.id}/delete"' in client.get(PAGE).get_data(as_text=True)
    confirm = client.get(f"/admin/training/{record.id}/delete")
    assert confirm.status_code == 200 and "Delete this training record?" in _text(confirm)
    assert len(_records()) == 1  # asking deletes nothing
    url = f"/admin/training/{record.id}/delete"
    answer = client.post(url, data={"csrf_token": csrf_token(client, url)})
    assert answer.status_code == 302
    assert _records() == []
    [row] = _audit("training_deleted")
    assert (row.user_id, row.detail) == (
        admin.id,
        f"record {record_id} for user {trainee.id} ann@test.uhl: 'IEP desk induction' on 2026-01-05 by "
        "'Sam Lead (MBP Applications)'")
    assert client.get(url).status_code == 404
    assert client.post(url, data={"csrf_token": csrf_token(client, PAGE)}).status_code == 404


def test_staff_with_desk_roles_and_no_training_are_listed_and_downloaded(client, admin, make_user):
    untrained = _named(make_user, "analyst", "Zoe Untrained", "zoe@test.uhl")
    formula = _named(make_user, "am_radiology", "=HYPERLINK(\"x\")", "formula@test.uhl")
    trained = _named(make_user, "analyst", "Tom Trained", "tom@test.uhl")
    gone = _named(make_user, "analyst", "Gail Gone", "gail@test.uhl")
    gone.active = False
    _named(make_user, "requester", "Rita Requester", "rita@test.uhl")
    _named(make_user, "radiologist", "Raj Radiologist", "raj@test.uhl")
    db.session.add(TrainingRecord(user_id=trained.id, trainer_name="Sam", trained_on=date(2026, 1, 5), topic="IEP"))
    db.session.commit()
    page = client.get(PAGE).get_data(as_text=True)
    section = page[page.index('id="untrained"'):page.index('id="record"')]
    listed = re.findall(r'<a href="/admin/users/(\d+)">', section)
    assert listed == [str(formula.id), str(untrained.id)]  # by name; "=" sorts first
    assert 'href="/admin/training/untrained.csv"' in section
    download = client.get(PAGE + "/untrained.csv")
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert download.headers["Content-Disposition"].startswith('attachment; filename="desk-staff-without-training-')
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True).lstrip("\ufeff"))))
    assert rows[0] == ["name", "email", "role", "department", "phone", "added"]
    assert [row[:4] for row in rows[1:]] == [["'=HYPERLINK(\"x\")", "formula@test.uhl", "am_radiology", "Radiology"],
                                             ["Zoe Untrained", "zoe@test.uhl", "analyst", "Radiology"]]
    # Once trained, off the list.
    _record(client, **_valid(untrained))
    assert "Zoe Untrained" not in client.get(PAGE + "/untrained.csv").get_data(as_text=True)


def test_the_page_says_whether_desk_roles_need_training(app, client, admin):
    assert "DESK_REQUIRES_TRAINING is off" in _text(client.get(PAGE))
    app.config["IEP_SETTINGS"].desk_requires_training = True
    assert "are given only to someone with a training record" in _text(client.get(PAGE))


def test_a_users_page_links_to_recording_their_training(client, admin, make_user):
    trainee = _named(make_user, "analyst", "Ann Analyst", "ann@test.uhl")
    user_page = client.get(f"/admin/users/{trainee.id}").get_data(as_text=True)
    assert re.search(r'href="/admin/training\?trainee=ann(%40|@)test.uhl#record"', user_page)
    form = client.get(PAGE, query_string={"trainee": "ann@test.uhl"}).get_data(as_text=True)
    assert re.search(r'<input[^>]*name="trainee"[^>]*value="ann@test.uhl"', form)
