"""Every kind of answer carries the security headers, and static files and /healthz set no
session cookie for a client that has none (issue 11.17)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.extensions import db

SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "Permissions-Policy")
DENIED_FEATURES = ("camera=()", "microphone=()", "geolocation=()", "usb=()", "payment=()")


def assert_security_headers(response) -> None:  # noqa: ANN001
    missing = [name for name in SECURITY_HEADERS if name not in response.headers]
    assert not missing, f"{response.status} lacks {missing}"
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    policy = response.headers["Permissions-Policy"]
    assert all(feature in policy for feature in DENIED_FEATURES), policy


def session_cookies(response) -> list[str]:  # noqa: ANN001
    return [h for h in response.headers.getlist("Set-Cookie") if h.startswith("iep_desk_session=")]


@pytest.mark.parametrize(("method", "url", "headers", "status"), [
    ("GET", "/login", {}, 200),
    ("GET", "/", {}, 302),
    ("GET", "/requests", {"HX-Request": "true"}, 401),
    ("GET", "/static/css/site.css", {}, 200),
    ("GET", "/healthz", {}, 200),
    ("GET", "/no-such-page", {}, 404),
    ("POST", "/healthz", {}, 405),
    ("POST", "/login", {}, 400),  # no CSRF token
], ids=["page", "redirect", "htmx_sign_in_redirect", "static_file", "healthz", "not_found", "method_not_allowed",
        "csrf_refused"])
def test_every_kind_of_answer_carries_the_security_headers(client, method, url, headers, status):
    response = client.open(url, method=method, headers=headers)
    assert response.status_code == status
    assert_security_headers(response)


def test_the_403_page_carries_the_security_headers(client, login_as):
    login_as("requester")
    response = client.get("/desk")
    assert response.status_code == 403
    assert_security_headers(response)


def test_a_failed_statement_gives_the_500_page_with_its_headers(app, client, login_as):
    """On PostgreSQL a failed statement aborts the transaction: the error page must still
    render (the handler rolls back and does not load the user), with the headers."""
    login_as("requester")

    def broken_view():  # noqa: ANN202
        db.session.commit()  # as a view that saved something does: the signed-in user is expired
        db.session.execute(sa.text("SELECT no_such_column FROM users"))

    app.view_functions["intake.mine"] = broken_view
    for headers in ({}, {"HX-Request": "true"}):
        response = client.get("/requests", headers=headers)
        assert response.status_code == 500
        assert "Something went wrong" in response.get_data(as_text=True)
        assert_security_headers(response)
    assert client.get("/healthz").status_code == 200  # the session is usable again


def test_the_500_page_needs_no_database(app, client, login_as):
    login_as("requester")

    def refuse(*args):  # noqa: ANN002, ANN202
        raise sa.exc.OperationalError("SELECT", {}, Exception("the database is gone"))

    def broken_view():  # noqa: ANN202
        sa.event.listen(db.engine, "before_cursor_execute", refuse)
        raise RuntimeError("a bug")

    app.view_functions["intake.mine"] = broken_view
    try:
        response = client.get("/requests")
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", refuse)
    assert response.status_code == 500 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "Something went wrong" in page and "<html" in page
    assert "Sign out" not in page  # the user menu would load the user
    assert_security_headers(response)


@pytest.mark.parametrize("url", ["/static/css/site.css", "/healthz"])
def test_static_files_and_healthz_set_no_session_cookie_for_a_client_without_one(client, url):
    response = client.get(url)
    assert response.status_code == 200
    assert session_cookies(response) == []


def test_the_sign_in_page_still_sets_its_session_cookie(client):
    response = client.get("/login")
    assert session_cookies(response), "the sign-in form's CSRF token lives in the session"
