"""Users (issue 14.1): the admin's list, create, role, deactivate, unlock and forced password
reset, each audited as who did what to whom; the last-admin guard; DESK_REQUIRES_TRAINING in
the user form and the CLI (issue 14.7); /account/password and the guard that sends a user
there until they have chosen a new password."""

from __future__ import annotations

import html
import re
import time
from datetime import date

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.audit import AuditEvent
from app.auth import throttle
from app.auth.models import Role, User
from app.auth.training import TrainingRecord
from app.config import Settings
from app.extensions import db
from tests.conftest import csrf_token, post_form

PASSWORD = "correct-horse-9"
NEW_PASSWORD = "copper-meadow-violin"


def _audit(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _signed_in(app, user: User, password: str = PASSWORD) -> FlaskClient:  # noqa: ANN001
    """A browser of its own in which `user` signs in."""
    other = app.test_client()
    answer = post_form(other, "/login", {"email": user.email, "password": password})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return other


def _post(client: FlaskClient, url: str, data: dict[str, object] | None = None, page: str = "/admin/users"):
    return client.post(url, data={"csrf_token": csrf_token(client, page), **(data or {})})


def _reload(user: User) -> User:
    db.session.expire_all()
    return db.session.get_one(User, user.id)


def _text(response) -> str:  # noqa: ANN001
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))))


def _training(user: User) -> None:
    db.session.add(TrainingRecord(user_id=user.id, trainer_name="Pat Trainer", trained_on=date(2026, 1, 5),
                                  topic="IEP desk induction"))
    db.session.commit()


@pytest.fixture
def admin(client, login_as) -> User:
    return login_as("admin")


@pytest.fixture
def requires_training(app):  # noqa: ANN001, ANN201
    app.config["IEP_SETTINGS"].desk_requires_training = True


# --- who may ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_reaches_the_user_pages(client, login_as, make_user, role):
    login_as(role)
    other = make_user("requester")
    assert client.get("/admin/users").status_code == 403
    assert client.get("/admin/users/new").status_code == 403
    assert client.get(f"/admin/users/{other.id}").status_code == 403
    assert _post(client, f"/admin/users/{other.id}/role", {"role": "admin"}, page="/requests").status_code == 403
    assert _reload(other).role == Role.REQUESTER


def test_a_change_without_the_forms_token_is_refused(client, admin, make_user):
    other = make_user("requester")
    assert client.post(f"/admin/users/{other.id}/role", data={"role": "admin"}).status_code == 400
    assert _reload(other).role == Role.REQUESTER


# --- the list -----------------------------------------------------------------------------


def test_the_list_searches_by_name_and_email_and_filters_by_role(client, admin, make_user):
    anna = make_user("analyst", email="anna.k@test.uhl")
    anna.name = "Anna Karenina"
    bob = make_user("requester", email="bob.s@test.uhl")
    bob.name = "Bob Smith"
    db.session.commit()
    page = _text(client.get("/admin/users"))
    assert "Anna Karenina" in page and "Bob Smith" in page
    by_name = _text(client.get("/admin/users?q=karen"))
    assert "Anna Karenina" in by_name and "Bob Smith" not in by_name
    by_email = _text(client.get("/admin/users?q=BOB.S@"))
    assert "Bob Smith" in by_email and "Anna Karenina" not in by_email
    by_role = _text(client.get("/admin/users?role=analyst"))
    assert "Anna Karenina" in by_role and "Bob Smith" not in by_role
    assert "No user matches “zzz”" in _text(client.get("/admin/users?q=zzz"))
    # A wildcard is a character like any other.
    assert "No user matches “%”" in _text(client.get("/admin/users?q=%25"))
    # The search box asks for the rows alone.
    fragment = client.get("/admin/users?q=karen", headers={"HX-Request": "true"})
    assert fragment.get_data(as_text=True).lstrip().startswith('<div id="users-list"')
    assert "HX-Request" in fragment.headers["Vary"]


def test_the_list_is_paginated(client, admin, make_user):
    for n in range(55):
        user = make_user("requester", email=f"person{n:02d}@test.uhl")
        user.name = f"Person {n:02d}"
    db.session.commit()
    first = _text(client.get("/admin/users?role=requester"))
    assert "Page 1 of 2 (55 users)" in first
    assert "Person 00" in first and "Person 49" in first and "Person 50" not in first
    second = _text(client.get("/admin/users?role=requester&page=2"))
    assert "Person 50" in second and "Person 54" in second and "Person 49" not in second
    assert "Page 2 of 2" in _text(client.get("/admin/users?role=requester&page=99"))  # past the end: the last


# --- create -------------------------------------------------------------------------------


def _new_user(**changes: object) -> dict[str, object]:
    return {"name": "Nadia Okafor", "email": "N.Okafor@Test.uhl", "role": "requester", "phone": "x4411",
            "department": "Ward 7", "password": NEW_PASSWORD, "must_change_password": "y", **changes}


def test_an_admin_creates_a_user_who_then_chooses_their_own_password(app, client, admin):
    answer = _post(client, "/admin/users/new", _new_user(), page="/admin/users/new")
    assert answer.status_code == 302
    user = db.session.scalars(sa.select(User).where(User.email == "N.Okafor@test.uhl")).one()
    assert (user.name, user.role, user.phone, user.department, user.must_change_password) == (
        "Nadia Okafor", Role.REQUESTER, "x4411", "Ward 7", True)
    assert answer.headers["Location"] == f"/admin/users/{user.id}"
    [row] = _audit("user_created")
    assert (row.user_id, row.actor) == (admin.id, admin.email)
    assert row.detail == f"user {user.id} N.Okafor@test.uhl: created as requester, to choose their own password " \
                         "at first sign-in"
    # Their first sign-in leads to the password page, and nowhere else until it is done.
    theirs = app.test_client()
    signed_in = post_form(theirs, "/login", {"email": "n.okafor@test.uhl", "password": NEW_PASSWORD})
    assert signed_in.status_code == 302
    assert theirs.get(signed_in.headers["Location"]).headers["Location"] == "/account/password"


def test_a_user_created_without_the_tick_signs_in_straight_away(app, client, admin):
    data = _new_user()
    del data["must_change_password"]
    assert _post(client, "/admin/users/new", data, page="/admin/users/new").status_code == 302
    theirs = app.test_client()
    post_form(theirs, "/login", {"email": "n.okafor@test.uhl", "password": NEW_PASSWORD})
    assert theirs.get("/requests").status_code == 200


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        pytest.param({"password": "short-one"}, "password", "Use at least 12 characters", id="password_too_short"),
        pytest.param({"password": "Password123!"}, "password", "too easy to guess", id="password_common"),
        pytest.param({"password": "okafor-kettle-orbit"}, "password", "your own name or e-mail",
                     id="password_own_name"),
        pytest.param({"email": "not an address"}, "email", "Enter a valid e-mail address", id="email_invalid"),
        pytest.param({"name": "  "}, "name", "Enter the person's full name", id="name_missing"),
        pytest.param({"role": "wizard"}, "role", "Not a valid choice", id="role_unknown"),
        pytest.param({"department": "d" * 121}, "department", "longer than 120", id="department_too_long"),
    ],
)
def test_create_refuses_bad_input_naming_the_field_and_keeping_what_was_typed(client, admin, changes, field, message):
    answer = _post(client, "/admin/users/new", _new_user(**changes), page="/admin/users/new")
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    error = re.search(rf'id="{field}-error">(.*?)</p>', page, re.S)
    assert error and message in html.unescape(error.group(1)), page[:3000]
    if field != "name":
        assert 'value="Nadia Okafor"' in page
    if field != "email":
        assert 'value="N.Okafor@Test.uhl"' in page
    assert NEW_PASSWORD not in page  # a password is never sent back
    assert db.session.scalar(sa.select(sa.func.count(User.id))) == 1  # the admin alone
    assert _audit("user_created") == []


def test_create_refuses_an_email_address_that_is_taken(client, admin, make_user):
    make_user("requester", email="n.okafor@test.uhl")
    answer = _post(client, "/admin/users/new", _new_user(), page="/admin/users/new")
    assert answer.status_code == 422
    error = re.search(r'id="email-error">(.*?)</p>', answer.get_data(as_text=True), re.S)
    assert error and "A user with the e-mail address N.Okafor@test.uhl already exists" in error.group(1)
    assert db.session.scalar(sa.select(sa.func.count(User.id))) == 2


# --- role ---------------------------------------------------------------------------------


def test_a_role_change_is_audited_and_ends_the_users_sessions(app, client, admin, make_user):
    other = make_user("requester")
    theirs = _signed_in(app, other)
    answer = _post(client, f"/admin/users/{other.id}/role", {"role": "analyst"})
    assert answer.status_code == 302
    assert _reload(other).role == Role.ANALYST
    assert theirs.get("/requests").status_code == 302  # signed out
    [row] = _audit("user_changed")
    assert (row.user_id, row.detail) == (admin.id, f"user {other.id} {other.email}: role requester -> analyst")
    assert "is now Service desk analyst" in _text(client.get(answer.headers["Location"]))


def test_the_last_admin_cannot_demote_themselves(client, admin):
    answer = _post(client, f"/admin/users/{admin.id}/role", {"role": "requester"})
    assert answer.status_code == 422
    assert "This is the last active administrator account" in _text(answer)
    assert 'id="role-error"' in answer.get_data(as_text=True)
    assert _reload(admin).role == Role.ADMIN
    assert _audit("user_changed") == []
    assert client.get("/admin/users").status_code == 200  # still an admin, still signed in


def test_an_admin_may_step_down_while_another_admin_remains(client, admin, make_user):
    make_user("admin")
    answer = _post(client, f"/admin/users/{admin.id}/role", {"role": "analyst"})
    assert answer.status_code == 302
    assert _reload(admin).role == Role.ANALYST
    assert client.get("/admin/users").status_code == 403  # the new role, in this very session
    assert client.get("/desk").status_code == 200


def test_a_deactivated_admin_does_not_count_as_the_other_admin(client, admin, make_user):
    gone = make_user("admin")
    gone.active = False
    db.session.commit()
    assert _post(client, f"/admin/users/{admin.id}/role", {"role": "requester"}).status_code == 422


# --- deactivate and reactivate ------------------------------------------------------------


def test_deactivating_asks_first_then_ends_sessions_and_sign_in(app, client, admin, make_user):
    other = make_user("analyst")
    theirs = _signed_in(app, other)
    page = client.get(f"/admin/users/{other.id}")
    assert f'href="/admin/users/{other.id}/deactivate"' in page.get_data(as_text=True)
    confirm = client.get(f"/admin/users/{other.id}/deactivate")
    assert confirm.status_code == 200
    assert f"Deactivate {other.name}?" in _text(confirm)
    assert _reload(other).active  # asking changes nothing
    answer = _post(client, f"/admin/users/{other.id}/deactivate", page=f"/admin/users/{other.id}/deactivate")
    assert answer.status_code == 302
    assert not _reload(other).active
    assert theirs.get("/desk").status_code == 302  # the open session has ended
    refused = post_form(app.test_client(), "/login", {"email": other.email, "password": PASSWORD})
    assert refused.status_code == 401 and "do not match an active account" in _text(refused)
    [row] = _audit("user_changed")
    assert (row.user_id, row.detail) == (admin.id, f"user {other.id} {other.email}: deactivated")
    # And back.
    assert _post(client, f"/admin/users/{other.id}/reactivate").status_code == 302
    assert _reload(other).active
    assert _audit("user_changed")[-1].detail == f"user {other.id} {other.email}: reactivated"
    assert post_form(app.test_client(), "/login", {"email": other.email, "password": PASSWORD}).status_code == 302


def test_an_admin_cannot_deactivate_their_own_account(client, admin, make_user):
    make_user("admin")  # not the last one, and still refused
    confirm = client.get(f"/admin/users/{admin.id}/deactivate")
    assert "You cannot deactivate your own account" in _text(confirm)
    assert "Deactivate Test Admin</button>" not in confirm.get_data(as_text=True)
    answer = _post(client, f"/admin/users/{admin.id}/deactivate")
    assert answer.status_code == 422 and "You cannot deactivate your own account" in _text(answer)
    assert _reload(admin).active
    assert _audit("user_changed") == []


# --- unlock -------------------------------------------------------------------------------


def test_unlock_lets_a_locked_out_user_sign_in_again(app, client, admin, make_user):
    other = make_user("analyst")
    for _ in range(throttle.ACCOUNT.lock_at):
        throttle.record_failure(other.email, "10.9.9.9")
    theirs = app.test_client()
    locked = post_form(theirs, "/login", {"email": other.email, "password": PASSWORD})
    assert locked.status_code == 429 and "Sign-in is locked" in _text(locked)
    assert "Locked for 15 more minutes after 10 failed attempts" in _text(client.get(f"/admin/users/{other.id}"))
    answer = _post(client, f"/admin/users/{other.id}/unlock")
    assert answer.status_code == 302
    assert "can sign in again now" in _text(client.get(answer.headers["Location"]))
    [row] = _audit("sign_in_unlocked")
    assert (row.user_id, row.detail) == (admin.id, f"user {other.id} {other.email}: account unlocked")
    assert post_form(theirs, "/login", {"email": other.email, "password": PASSWORD}).status_code == 302


# --- forced password reset ----------------------------------------------------------------


def test_a_forced_reset_keeps_the_user_on_the_password_page_until_they_choose_one(app, client, admin, make_user):
    other = make_user("requester")
    theirs = _signed_in(app, other)
    answer = _post(client, f"/admin/users/{other.id}/reset-password")
    assert answer.status_code == 302
    assert _reload(other).must_change_password
    [row] = _audit("user_changed")
    assert (row.user_id, row.detail) == (admin.id, f"user {other.id} {other.email}: must choose a new password at "
                                                   "next sign-in")
    assert theirs.get("/requests").status_code == 302 and "/login" in theirs.get("/requests").headers["Location"]
    # At the next sign-in: the password page, whatever they ask for.
    theirs = _signed_in(app, other)
    for url in ("/requests", "/requests/new/import", "/"):
        assert theirs.get(url).headers["Location"] == "/account/password", url
    htmx = theirs.get("/requests", headers={"HX-Request": "true"})
    assert htmx.headers["HX-Redirect"] == "/account/password"
    page = theirs.get("/account/password")
    assert page.status_code == 200 and "An administrator has asked you to choose a new password" in _text(page)
    # The page's own rules.
    wrong = _post(theirs, "/account/password", {"current_password": "not-it-at-all", "new_password": NEW_PASSWORD,
                                                "confirm_password": NEW_PASSWORD}, page="/account/password")
    assert wrong.status_code == 422 and "This is not your current password" in _text(wrong)
    weak = _post(theirs, "/account/password", {"current_password": PASSWORD, "new_password": "Password123!",
                                               "confirm_password": "Password123!"}, page="/account/password")
    assert weak.status_code == 422 and "too easy to guess" in _text(weak)
    assert 'id="new_password-error"' in weak.get_data(as_text=True)
    differ = _post(theirs, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                                 "confirm_password": NEW_PASSWORD + "x"}, page="/account/password")
    assert differ.status_code == 422 and "The two new passwords differ" in _text(differ)
    same = _post(theirs, "/account/password", {"current_password": PASSWORD, "new_password": PASSWORD,
                                               "confirm_password": PASSWORD}, page="/account/password")
    assert same.status_code == 422 and "different from your current one" in _text(same)
    assert theirs.get("/requests").headers["Location"] == "/account/password"  # still
    done = _post(theirs, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                               "confirm_password": NEW_PASSWORD}, page="/account/password")
    assert done.status_code == 302 and done.headers["Location"] == "/requests"
    assert theirs.get("/requests").status_code == 200  # free to go, in this session
    assert not _reload(other).must_change_password
    [changed] = _audit("password_changed")
    assert (changed.user_id, changed.detail) == (other.id, "by the user, as an administrator asked")
    assert post_form(app.test_client(), "/login", {"email": other.email, "password": PASSWORD}).status_code == 401
    assert post_form(app.test_client(), "/login", {"email": other.email, "password": NEW_PASSWORD}).status_code == 302


def test_changing_ones_own_password_ends_the_other_sessions(app, client, make_user):
    user = make_user("analyst")
    here, there = _signed_in(app, user), _signed_in(app, user)
    done = _post(here, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                                             "confirm_password": NEW_PASSWORD}, page="/account/password")
    assert done.status_code == 302
    assert here.get("/desk").status_code == 200
    assert there.get("/desk").status_code == 302
    assert _audit("password_changed")[0].detail == "by the user"


def test_wrong_current_passwords_count_towards_the_sign_in_lock(app, make_user, monkeypatch):
    user = make_user("requester")
    theirs = _signed_in(app, user)
    clock = [time.time()]
    monkeypatch.setattr(throttle, "now", lambda: clock[0])
    for _ in range(throttle.ACCOUNT.lock_at - 1):
        clock[0] += 400  # past every delay: only the count matters here
        throttle.record_failure(user.email, "10.9.9.9")
    clock[0] += 400
    token = csrf_token(theirs, "/account/password")
    data = {"csrf_token": token, "current_password": "guess-number-one", "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD}
    assert theirs.post("/account/password", data=data).status_code == 422
    locked = theirs.post("/account/password", data={**data, "current_password": PASSWORD})
    assert locked.status_code == 429 and "Sign-in is locked" in _text(locked)
    assert [e.user_id for e in _audit("sign_in_locked")] == [user.id]


def test_an_admin_cannot_force_their_own_reset(client, admin):
    answer = _post(client, f"/admin/users/{admin.id}/reset-password")
    assert answer.status_code == 422 and "Change your own password" in _text(answer)
    assert not _reload(admin).must_change_password


# --- DESK_REQUIRES_TRAINING ---------------------------------------------------------------


def test_the_setting_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("DESK_REQUIRES_TRAINING", raising=False)
    assert Settings.from_env(tmp_path).desk_requires_training is False
    monkeypatch.setenv("DESK_REQUIRES_TRAINING", "1")
    assert Settings.from_env(tmp_path).desk_requires_training is True


def test_without_the_setting_desk_roles_need_no_training(client, admin, make_user):
    other = make_user("requester")
    assert _post(client, f"/admin/users/{other.id}/role", {"role": "analyst"}).status_code == 302


@pytest.mark.usefixtures("requires_training")
@pytest.mark.parametrize("role", ["analyst", "am_radiology"])
def test_with_the_setting_a_desk_role_needs_a_training_record(client, admin, make_user, role):
    other = make_user("requester")
    refused = _post(client, f"/admin/users/{other.id}/role", {"role": role})
    assert refused.status_code == 422
    assert "desk roles need a training record" in _text(refused)
    assert 'id="role-error"' in refused.get_data(as_text=True)
    assert _reload(other).role == Role.REQUESTER
    created = _post(client, "/admin/users/new", _new_user(role=role), page="/admin/users/new")
    assert created.status_code == 422 and "create the user with another role" in _text(created)
    # Other roles are not desk roles here.
    assert _post(client, f"/admin/users/{other.id}/role", {"role": "radiologist"}).status_code == 302
    _training(other)
    assert _post(client, f"/admin/users/{other.id}/role", {"role": role}).status_code == 302
    assert _reload(other).role == Role(role)


@pytest.mark.usefixtures("requires_training")
def test_with_the_setting_the_cli_refuses_a_desk_role_without_training(runner, make_user):
    created = runner.invoke(args=["users", "create", "--email", "new@test.uhl", "--name", "New Person",
                                  "--role", "analyst", "--password", NEW_PASSWORD])
    assert created.exit_code != 0 and "desk roles need a training record" in created.output
    assert db.session.scalar(sa.select(User).where(User.email == "new@test.uhl")) is None
    other = make_user("requester")
    refused = runner.invoke(args=["users", "set-role", "--email", other.email, "--role", "am_radiology"])
    assert refused.exit_code != 0 and "desk roles need a training record" in refused.output
    assert _reload(other).role == Role.REQUESTER
    _training(other)
    allowed = runner.invoke(args=["users", "set-role", "--email", other.email, "--role", "am_radiology"])
    assert allowed.exit_code == 0, allowed.output
    assert _reload(other).role == Role.AM_RADIOLOGY
    plain = runner.invoke(args=["users", "create", "--email", "req@test.uhl", "--name", "Req Person",
                                "--role", "requester", "--password", NEW_PASSWORD])
    assert plain.exit_code == 0, plain.output


def test_the_admin_home_links_users_and_training(client, admin):
    html = client.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/users"' in html and 'href="/admin/training"' in html
