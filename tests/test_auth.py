"""Sign-in, sign-out, sessions and roles (issue: sign-in and roles; PITFALLS "Web")."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from tests.conftest import csrf_token, post_form


def _audit_actions() -> list[str]:
    return list(db.session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.id)))


def test_pages_need_sign_in_and_send_you_back_after(client, make_user):
    response = client.get("/requests/new/import")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=/requests/new/import")
    user = make_user("requester")
    response = post_form(
        client, "/login?next=/requests/new/import", {"email": user.email, "password": "correct-horse-9"}
    )
    assert response.headers["Location"] == "/requests/new/import"


def test_sign_in_is_audited_including_failures(client, make_user):
    user = make_user("requester")
    bad = post_form(client, "/login", {"email": user.email, "password": "wrong-password"})
    assert bad.status_code == 401
    assert "do not match an active account" in bad.get_data(as_text=True)
    # What the user typed is kept (the e-mail), the password is not echoed back.
    assert f'value="{user.email}"' in bad.get_data(as_text=True)
    good = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    assert good.status_code == 302
    assert _audit_actions() == ["sign_in_failed", "sign_in"]
    failed = db.session.scalar(sa.select(AuditEvent).where(AuditEvent.action == "sign_in_failed"))
    assert failed.actor == user.email and failed.user_id is None


def test_open_redirect_after_sign_in_is_refused(client, make_user):
    user = make_user("requester")
    response = post_form(client, "/login?next=//evil.example/x", {"email": user.email, "password": "correct-horse-9"})
    assert response.headers["Location"] == "/requests"  # where a requester starts, not the other site


LANDINGS = [("requester", "/requests"), ("analyst", "/desk"), ("am_radiology", "/desk"), ("admin", "/admin/"),
            ("radiologist", "/trauma")]


@pytest.mark.parametrize(("role", "lands"), LANDINGS, ids=[f"{role}_lands_on_{lands}" for role, lands in LANDINGS])
def test_each_role_lands_where_it_works_after_sign_in_and_at_the_start_page(app, client, make_user, role, lands):
    """Issue 13.4: the desk at the queue, the on-call radiologist at the trauma transfer."""
    from app.auth.routes import landing_for

    user = make_user(role)
    with app.test_request_context():
        assert landing_for(user) == lands
    signed_in = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    assert signed_in.status_code == 302 and signed_in.headers["Location"] == lands
    home = client.get("/")
    assert home.status_code == 302 and home.headers["Location"] == lands
    assert client.get("/login").headers["Location"] == "/"  # signed in already: the start page, then as above
    assert client.get(lands).status_code == 200  # and the role may see it


def test_a_safe_next_still_wins_over_the_landing_page(client, make_user):
    user = make_user("analyst")
    response = post_form(client, "/login?next=/requests/new/cd", {"email": user.email, "password": "correct-horse-9"})
    assert response.headers["Location"] == "/requests/new/cd"


def test_login_without_csrf_token_is_refused_with_a_clear_page(client, make_user):
    user = make_user("requester")
    response = client.post("/login", data={"email": user.email, "password": "correct-horse-9"})
    assert response.status_code == 400
    assert "session has ended" in response.get_data(as_text=True)


def test_sign_out_ends_every_session_of_the_user(app, make_user):
    user = make_user("analyst")
    first, second = app.test_client(), app.test_client()
    for browser in (first, second):
        post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
        assert browser.get("/requests").status_code == 200
    first.post("/logout", data={"csrf_token": csrf_token(first, "/requests")})
    # The other browser's cookie is still signed, but no longer accepted.
    assert second.get("/requests").status_code == 302


def test_deactivated_user_is_signed_out_at_once(client, login_as):
    user = login_as("requester")
    assert client.get("/requests").status_code == 200
    user.active = False
    db.session.commit()
    assert client.get("/requests").status_code == 302


def test_htmx_request_with_expired_session_gets_hx_redirect_not_a_swapped_login_page(client):
    response = client.get("/requests?q=x", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login")


def test_session_cookie_is_short_lived_and_http_only(client, make_user):
    user = make_user("requester")
    response = post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("iep_desk_session="))
    assert "HttpOnly" in cookie
    assert "Expires=" in cookie  # permanent session with the idle lifetime, not 31 days
    assert client.application.permanent_session_lifetime.total_seconds() <= 60 * 60


def test_users_create_cli(runner):
    result = runner.invoke(args=["users", "create", "--email", "new@test.uhl", "--name", "New Person",
                                 "--role", "analyst", "--password", "long-enough-pw"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(args=["users", "create", "--email", "NEW@test.uhl", "--name", "Dup",
                                "--role", "analyst", "--password", "long-enough-pw"])
    assert again.exit_code != 0 and "already exists" in again.output
    bad_role = runner.invoke(args=["users", "create", "--email", "x@test.uhl", "--name", "X",
                                   "--role", "wizard", "--password", "long-enough-pw"])
    assert bad_role.exit_code != 0


def test_audit_rows_cannot_be_rewritten_even_by_sql(app, make_user, client):
    user = make_user("requester")
    post_form(client, "/login", {"email": user.email, "password": "correct-horse-9"})
    with db.engine.connect() as conn:
        try:
            conn.execute(sa.text("UPDATE audit_events SET action = 'nothing'"))
            conn.commit()
            rewritten = True
        except sa.exc.DBAPIError:
            rewritten = False
    assert not rewritten
    assert _audit_actions() == ["sign_in"]


def test_healthz_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "redis": "ok"}


def test_healthz_is_503_when_redis_is_unreachable(app, client):
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    app.extensions["iep_redis"] = Redis(
        unix_socket_path="/nonexistent/redis.sock", socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["redis"] == "unreachable"


def test_idle_session_is_ended_by_the_server_not_only_by_the_cookie(client, login_as, monkeypatch):
    import time as real_time

    login_as("requester")
    assert client.get("/requests").status_code == 200
    later = real_time.time() + 31 * 60
    monkeypatch.setattr("time.time", lambda: later)  # the cookie is still sent, but too old
    response = client.get("/requests")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert "Your session has ended" in client.get(response.headers["Location"]).get_data(as_text=True)


def test_csrf_token_of_a_page_left_open_for_hours_still_works_while_the_session_lives(client, login_as, monkeypatch):
    import time as real_time

    login_as("requester")
    token = csrf_token(client, "/requests")
    start = real_time.time()
    # The page stays open for three hours and its user works on it every 20 minutes.
    for minutes in range(20, 181, 20):
        monkeypatch.setattr("time.time", lambda m=minutes: start + m * 60)
        assert client.get("/requests", headers={"HX-Request": "true"}).status_code == 200
    response = client.post("/requests", data={"q": "x"}, headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_htmx_post_with_csrf_header_only_is_accepted_and_without_it_refused(client, login_as):
    login_as("requester")
    token = csrf_token(client, "/requests")
    headers = {"X-CSRFToken": token, "HX-Request": "true"}
    assert client.post("/requests", data={"q": ""}, headers=headers).status_code == 200
    assert client.post("/requests", data={"q": ""}, headers={"HX-Request": "true"}).status_code == 400


def test_role_change_ends_the_users_sessions(runner, client, login_as):
    user = login_as("requester")
    assert client.get("/requests").status_code == 200
    result = runner.invoke(args=["users", "set-role", "--email", user.email, "--role", "analyst"])
    assert result.exit_code == 0, result.output
    assert client.get("/requests").status_code == 302


def test_log_lines_cannot_be_forged_with_newlines():
    import logging

    from app.logs import SingleLineFormatter

    forged = "x@y" + chr(10) + "2026-11-28 INFO sign_in ok"
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "sign in failed for %s", (forged,), None)
    line = SingleLineFormatter("%(message)s").format(record)
    assert chr(10) not in line and line.endswith("x@y\\n2026-11-28 INFO sign_in ok")


def test_the_cli_keeps_an_active_administrator_as_the_admin_pages_do(runner, make_user):
    """`flask users` refuses to demote or deactivate the last active administrator, saying
    what to do first; with a second administrator, both changes go through."""
    from app.auth.models import Role
    from app.extensions import db

    admin = make_user("admin")
    for args in (["set-role", "--email", admin.email, "--role", "analyst"], ["deactivate", "--email", admin.email]):
        result = runner.invoke(args=["users", *args])
        assert result.exit_code != 0 and "last active administrator account" in result.output, result.output
    db.session.expire_all()
    assert (admin.role, admin.active) == (Role.ADMIN, True)
    second = make_user("analyst")
    assert runner.invoke(args=["users", "set-role", "--email", second.email, "--role", "admin"]).exit_code == 0
    assert runner.invoke(args=["users", "deactivate", "--email", admin.email]).exit_code == 0
    db.session.expire_all()
    assert admin.active is False


@pytest.mark.parametrize("proxies", [0, 1], ids=["no proxy: the header is anyone's", "one trusted proxy"])
def test_the_client_address_is_the_proxys_report_only_behind_a_trusted_proxy(app, make_user, proxies):
    """TRUSTED_PROXIES=1 (the desk behind one reverse proxy): the address the sign-in lock
    counts and the audit trail records is the client's, as the proxy reports it, so one
    person's failed sign-ins lock that person's address, not every user's. Without a
    trusted proxy an X-Forwarded-For is anyone's to send: ignored."""
    from dataclasses import replace

    from app import create_app
    from app.audit import Action, AuditEvent
    from app.extensions import db

    settings = replace(app.config["IEP_SETTINGS"], trusted_proxies=proxies)
    desk = create_app(settings, TESTING=True)
    user = make_user("requester")
    client = desk.test_client()
    token = csrf_token(client, "/login")
    answer = client.post("/login", data={"csrf_token": token, "email": user.email, "password": "wrong-horse-1"},
                         headers={"X-Forwarded-For": "10.20.30.40", "X-Forwarded-Proto": "https"})
    assert answer.status_code == 401
    with desk.app_context():
        recorded = db.session.scalars(sa.select(AuditEvent.remote_addr)
                                      .where(AuditEvent.action == Action.SIGN_IN_FAILED)).all()
    assert recorded == ["10.20.30.40" if proxies else "127.0.0.1"]
