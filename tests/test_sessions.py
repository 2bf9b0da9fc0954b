"""Sign-in and sessions after the security review (issue 11, points 1-5).

1. failed sign-ins slow down and then lock, per account and per address, in Redis that
   every web process shares (two app instances here); unknown accounts answer the same;
   an admin unlocks; every lock is audited.
2. polls do not keep a session alive; a poll after the idle time-out is sent to sign in.
3. an unknown e-mail address costs the same time as a known one.
4. sign-in and sign-out start a new session with a new CSRF token.
5. the password rule (NCSC): length, common and guessable passwords, own name and e-mail.
"""

from __future__ import annotations

import re
import time

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.audit import AuditEvent
from app.auth import models as auth_models
from app.auth import throttle
from app.extensions import db
from tests.conftest import COMPILED_TEMPLATES, IsolatedClient, csrf_token, post_form

PASSWORD = "correct-horse-9"
NO_MATCH = "do not match an active account"


def _audit(action: str) -> list[AuditEvent]:
    return list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _error(response) -> str:  # noqa: ANN001
    """The sign-in page's message to the user."""
    html = response.get_data(as_text=True)
    for text in (NO_MATCH, "Too many failed sign-ins", "Sign-in is locked"):
        if text in html:
            start = html.index(text)
            return re.sub(r"<[^>]+>", "", html[start : html.index("<", start)])
    return ""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttle's clock, moved by the test (Redis keeps its real TTLs)."""
    now = [time.time()]
    monkeypatch.setattr(throttle, "now", lambda: now[0])
    return now


@pytest.fixture
def second_app(app: Flask) -> Flask:
    """A second web process of the same desk: same settings, database, Redis and secret."""
    other = create_app(app.config["IEP_SETTINGS"], TESTING=True)
    other.test_client_class = IsolatedClient
    other.jinja_env.bytecode_cache = COMPILED_TEMPLATES
    return other


def _try(client: FlaskClient, email: str, password: str):  # noqa: ANN202
    return post_form(client, "/login", {"email": email, "password": password})


# 1. Brute force ---------------------------------------------------------------------


def test_failed_sign_ins_slow_down_then_lock_across_two_web_processes(app, second_app, make_user, clock, runner):
    user = make_user("analyst")
    one, two = app.test_client(), second_app.test_client()
    for attempt in range(3):  # a few mistakes cost nothing
        response = _try((one, two)[attempt % 2], user.email, "wrong-password")
        assert response.status_code == 401 and NO_MATCH in _error(response)
    # The other process knows: the right password now waits too, and says for how long.
    response = _try(two, user.email, PASSWORD)
    assert response.status_code == 429
    assert _error(response) == "Too many failed sign-ins. Wait 1 second and try again."
    assert response.headers["Retry-After"] == "1"
    clock[0] += 2
    assert _try(one, user.email, "wrong-password").status_code == 401
    response = _try(two, user.email, PASSWORD)
    assert response.status_code == 429 and "Wait 2 seconds" in _error(response)  # the delay grows
    failures = 4
    while failures < throttle.ACCOUNT.lock_at:
        clock[0] += 400
        assert _try((one, two)[failures % 2], user.email, "wrong-password").status_code == 401
        failures += 1
    clock[0] += 400  # longer than any delay: only the lock is left
    for client in (one, two):
        response = _try(client, user.email, PASSWORD)
        assert response.status_code == 429
        assert "Sign-in is locked after too many failed attempts" in _error(response)
        assert "x18000" in _error(response)
    locks = _audit("sign_in_locked")
    assert [(e.user_id, e.actor) for e in locks] == [(user.id, user.email)]
    assert "account locked for 15 min after 10 failed sign-ins" in locks[0].detail
    # An administrator lifts the lock (audited); then the right password signs in.
    result = runner.invoke(args=["users", "unlock", "--email", user.email.upper()])
    assert result.exit_code == 0 and "sign-in unlocked" in result.output, result.output
    assert [e.actor for e in _audit("sign_in_unlocked")] == ["cli"]
    assert _try(two, user.email, PASSWORD).status_code == 302


def test_the_lock_ends_by_itself_and_a_good_sign_in_forgets_the_failures(app, make_user, clock):
    user = make_user("requester")
    client = app.test_client()
    for _ in range(throttle.ACCOUNT.lock_at):
        clock[0] += 400
        _try(client, user.email, "wrong-password")
    assert _try(client, user.email, PASSWORD).status_code == 429
    clock[0] += throttle.ACCOUNT.lock_seconds + 1
    assert _try(client, user.email, PASSWORD).status_code == 302
    # Forgotten: after the next mistake a few seconds' wait is enough again (the address's
    # own count still asks for those; the account's old count would ask for minutes).
    other = app.test_client()
    assert _try(other, user.email, "wrong-password").status_code == 401
    clock[0] += 5
    assert _try(other, user.email, PASSWORD).status_code == 302


def test_an_unknown_account_is_answered_exactly_like_a_known_one(app, make_user, clock):
    known = make_user("requester")
    answers: dict[str, list[tuple[int, str]]] = {}
    for email in (known.email, "nobody-here@test.uhl"):
        client = app.test_client()
        seen = []
        for _ in range(throttle.ACCOUNT.lock_at + 1):
            response = _try(client, email, "wrong-password")
            seen.append((response.status_code, _error(response)))
            clock[0] += 400
        answers[email] = seen
    assert answers[known.email] == answers["nobody-here@test.uhl"]
    assert answers[known.email][-1][0] == 429 and "locked" in answers[known.email][-1][1]
    assert [e.actor for e in _audit("sign_in_locked")] == [known.email, "nobody-here@test.uhl"]


def test_a_password_spray_from_one_address_locks_that_address(app, second_app, make_user, clock, runner):
    victim = make_user("radiologist")
    clients = (app.test_client(), second_app.test_client())
    for n in range(throttle.ADDRESS.lock_at):  # one guess per account, never the same account twice
        clock[0] += 400
        response = _try(clients[n % 2], f"person{n}@test.uhl", "Winter2026!")
        assert response.status_code == 401
    clock[0] += 400
    response = _try(clients[0], victim.email, PASSWORD)
    assert response.status_code == 429 and "Sign-in is locked" in _error(response)
    address_locks = [e for e in _audit("sign_in_locked") if e.detail.startswith("address")]
    assert len(address_locks) == 1 and "from 127.0.0.1" in address_locks[0].detail
    # Hammering on (any e-mail address will do) is refused and recorded once, not per attempt:
    # an anonymous client cannot grow the append-only audit table without bound (issue 11.9).
    for n in range(25):
        assert _try(clients[n % 2], f"flood{n}@test.uhl", "x").status_code == 429
    refused = [e for e in _audit("sign_in_failed") if e.detail.startswith("refused")]
    assert len(refused) == 1 and refused[0].actor == victim.email
    result = runner.invoke(args=["users", "unlock", "--address", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    assert _try(clients[1], victim.email, PASSWORD).status_code == 302


def test_successful_sign_ins_never_count(app, make_user):
    user = make_user("analyst")
    for _ in range(throttle.ADDRESS.lock_at + 5):
        assert _try(app.test_client(), user.email, PASSWORD).status_code == 302


def test_unlock_needs_an_email_or_an_address(runner):
    result = runner.invoke(args=["users", "unlock"])
    assert result.exit_code != 0 and "--email" in result.output


# 2. Idle time-out and polls -----------------------------------------------------------

POLL = {"HX-Request": "true", "X-IEP-Poll": "1"}


def _poll(client: FlaskClient, token: str):  # noqa: ANN202
    """What the "My requests" list sends every 10 s by itself (its CSRF header included)."""
    return client.post("/requests", data={"q": ""}, headers={**POLL, "X-CSRFToken": token})


def _at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    monkeypatch.setattr("time.time", lambda: moment)


def test_polls_do_not_keep_a_session_alive_and_a_late_poll_is_sent_to_sign_in(client, login_as, monkeypatch):
    login_as("requester")
    token = csrf_token(client, "/requests")
    start = time.time()
    for minutes in (10, 20, 29):  # the page polls on its own; nobody touches it
        _at(monkeypatch, start + minutes * 60)
        response = _poll(client, token)
        assert response.status_code == 200
        assert not response.headers.getlist("Set-Cookie"), "a poll must not renew the session"
    _at(monkeypatch, start + 31 * 60)
    response = _poll(client, token)
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login?")
    assert "ended=1" in response.headers["HX-Redirect"]


def test_a_persons_own_request_renews_the_session(client, login_as, monkeypatch):
    login_as("requester")
    start = time.time()
    _at(monkeypatch, start + 20 * 60)
    token = csrf_token(client, "/requests")  # they opened a page
    _at(monkeypatch, start + 40 * 60)
    assert _poll(client, token).status_code == 200
    _at(monkeypatch, start + 51 * 60)
    assert _poll(client, token).status_code == 401


def test_stay_signed_in_renews_the_session(client, login_as, monkeypatch):
    login_as("requester")
    token = csrf_token(client, "/requests")
    start = time.time()
    _at(monkeypatch, start + 29 * 60)
    response = client.post("/session/stay", headers={"X-CSRFToken": token, "HX-Request": "true"})
    assert response.status_code == 204 and response.headers.getlist("Set-Cookie")
    _at(monkeypatch, start + 45 * 60)
    assert client.get("/requests").status_code == 200


def test_signed_in_pages_carry_the_warning_and_the_lifetime(client, login_as):
    login_as("requester")
    html = client.get("/requests").get_data(as_text=True)
    assert 'data-session-seconds="1800"' in html
    assert 'id="session-warning"' in html and "Stay signed in" in html
    assert "<script>" not in html  # the CSP allows no inline script: desk.js does it


# 3. Timing ------------------------------------------------------------------------------


def test_an_unknown_email_takes_as_long_as_a_known_one(app, make_user, monkeypatch):
    # The real cost (scrypt), not the suite's cheap hash: timing is what is tested here.
    monkeypatch.setattr(auth_models, "PASSWORD_METHOD", "scrypt")
    known = [make_user("requester") for _ in range(7)]

    addresses = iter(range(1, 100))

    def timed(email: str) -> float:
        client = app.test_client()
        token = csrf_token(client)
        # Each attempt from an address of its own: the per-address throttle stays out of it.
        address = {"REMOTE_ADDR": f"10.0.0.{next(addresses)}"}
        began = time.perf_counter()
        response = client.post("/login", data={"csrf_token": token, "email": email, "password": "wrong-password"},
                               environ_base=address)
        elapsed = time.perf_counter() - began
        assert response.status_code == 401
        return elapsed

    timed("warm-up@test.uhl")  # the dummy hash is made on first use
    # Interleaved, so a busy machine (the suite runs in parallel) slows both sides alike; the
    # fastest of each side is its own cost, the others that cost plus whatever else ran.
    known_times, unknown_times = [], []
    for n, user in enumerate(known):
        known_times.append(timed(user.email))
        unknown_times.append(timed(f"nobody{n}@test.uhl"))
    ratio = min(unknown_times) / min(known_times)
    assert 0.6 < ratio < 1.6, (known_times, unknown_times)


# 4. Session and CSRF token rotation -------------------------------------------------


def _csrf_ok(client: FlaskClient, token: str) -> bool:
    response = client.post("/requests", data={"q": ""}, headers={"X-CSRFToken": token, "HX-Request": "true"})
    return response.status_code == 200


def test_sign_in_and_sign_out_start_a_new_session_and_csrf_token(client, make_user):
    first, second = make_user("requester"), make_user("analyst")
    before = csrf_token(client, "/login")
    post_form(client, "/login", {"email": first.email, "password": PASSWORD})
    mine = csrf_token(client, "/requests")
    assert mine != before
    assert not _csrf_ok(client, before)  # the token from before sign-in is dead
    assert _csrf_ok(client, mine)
    client.post("/logout", data={"csrf_token": mine})
    post_form(client, "/login", {"email": second.email, "password": PASSWORD})
    theirs = csrf_token(client, "/requests")
    assert theirs != mine
    assert not _csrf_ok(client, mine)  # the previous user's token does not work for the next
    assert _csrf_ok(client, theirs)


def test_the_session_cookie_changes_at_sign_in(client, make_user):
    user = make_user("requester")
    client.get("/login")
    cookie_before = client.get_cookie("iep_desk_session")
    assert cookie_before is not None
    post_form(client, "/login", {"email": user.email, "password": PASSWORD})
    cookie_after = client.get_cookie("iep_desk_session")
    assert cookie_after is not None and cookie_after.value != cookie_before.value


# 5. Passwords -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        pytest.param("short-one", "at least 12 characters", id="too_short"),
        pytest.param("aaaaaaaaaaaa", "too easy to guess", id="repeats"),
        pytest.param("Password123!", "too easy to guess", id="common_with_decoration"),
        pytest.param("qwertyuiop123", "too easy to guess", id="keyboard_walk"),
        pytest.param("P@ssw0rd2026", "too easy to guess", id="leet_common"),
        pytest.param("Sm1th-Margaret-1948", "your own name or e-mail", id="own_name_with_digits"),
        pytest.param("margaret-kettle-orbit", "your own name or e-mail", id="own_given_name"),
        pytest.param("msmith42-lantern-tide", "your own name or e-mail", id="own_email_local_part"),
    ],
)
def test_users_create_refuses_weak_passwords_with_a_clear_message(runner, password, message):
    result = runner.invoke(args=["users", "create", "--email", "msmith42@test.uhl", "--name", "Margaret Smith",
                                 "--role", "requester", "--password", password])
    assert result.exit_code != 0
    assert message in result.output, result.output


@pytest.mark.parametrize("password", ["kettle orbit lantern", "tr4uma-lemon-kettle", "all lowercase words here"])
def test_users_create_accepts_long_random_words_without_composition_rules(runner, password):
    result = runner.invoke(args=["users", "create", "--email", "msmith42@test.uhl", "--name", "Margaret Smith",
                                 "--role", "requester", "--password", password])
    assert result.exit_code == 0, result.output


def test_set_password_checks_the_rule_and_ends_sessions(runner, client, login_as):
    user = login_as("requester")
    weak = runner.invoke(args=["users", "set-password", "--email", user.email, "--password", "password1234"])
    assert weak.exit_code != 0 and "too easy to guess" in weak.output
    assert client.get("/requests").status_code == 200  # nothing changed
    good = runner.invoke(args=["users", "set-password", "--email", user.email, "--password", "copper-meadow-violin"])
    assert good.exit_code == 0, good.output
    assert client.get("/requests").status_code == 302  # signed out everywhere
    assert _try(client, user.email, "copper-meadow-violin").status_code == 302


def test_set_password_prompts_without_echo_when_no_password_is_given(runner, make_user):
    user = make_user("requester")
    result = runner.invoke(args=["users", "set-password", "--email", user.email],
                           input="copper-meadow-violin\ncopper-meadow-violin\n")
    assert result.exit_code == 0, result.output
    assert "copper-meadow-violin" not in result.output


