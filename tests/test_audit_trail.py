"""The audit trail's gaps closed (issue 11.9): every view, search and change of patient
data names who, when, what and which request (or the search criteria); polls write
nothing; refusals (403, CSRF) are audited for signed-in users only; status changes name
the person or the part of the system."""

from __future__ import annotations

import contextlib
import re
from datetime import datetime

import pytest
import sqlalchemy as sa
from flask import abort

from app import audit
from app.audit import Action, AuditEvent
from app.desk.queries import encode_cursor
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.transfers import jobs, service
from app.transfers.models import TransferState
from app.transfers.nodes import upsert_node
from tests.conftest import csrf_token, post_form
from tests.dicom_peers import free_port
from tests.test_log_privacy import PATIENT_VALUES, capture_all, everything_logged  # noqa: F401 - fixture
from tests.test_transfer_start import STUDY, _request

POLL = {"HX-Request": "true", "X-IEP-Poll": "1"}
HTMX = {"HX-Request": "true"}
# What the desk's filter form sends when nothing is filled in (desk/page.html).
EMPTY_FILTERS = {"call_ref": "", "patient_name": "", "nhs_number": "", "s_number": "", "institution": "",
                 "kind": "", "status": "", "priority": "", "date_from": "", "date_to": "", "assigned": ""}


def rows(*actions: Action) -> list[AuditEvent]:
    db.session.expire_all()
    stmt = sa.select(AuditEvent).order_by(AuditEvent.id)
    if actions:
        stmt = stmt.where(AuditEvent.action.in_([a.value for a in actions]))
    return list(db.session.scalars(stmt))


@pytest.fixture
def analyst(app, make_user):  # noqa: ANN201
    """A signed-in analyst with a browser of their own."""
    user = make_user("analyst")
    browser = app.test_client()
    assert post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"}).status_code == 302
    return user, browser


@pytest.fixture
def smith(app, make_user, pas_patients) -> Request:
    """An import request for the first PAS patient (Margaret Smith, NHS 999 000 0018)."""
    req = _request(Kind.IMPORT, pas_patients[0], make_user("requester"))
    req.nhs_number = pas_patients[0].nhs_number
    db.session.commit()
    return req


def _page_token(html: str) -> str:
    """The CSRF token htmx sends with every request of the page (base.html's hx-headers)."""
    return re.search(r'"X-CSRFToken": "([^"]+)"', html).group(1)


def _desk(browser):  # noqa: ANN001, ANN202
    """Open the queue; the page's htmx headers (its CSRF token) and its table's state."""
    page = browser.get("/desk")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    return {**HTMX, "X-CSRFToken": _page_token(html)}, _desk_state(html)


def _desk_state(html: str) -> dict[str, str]:
    """The state inputs the queue's table carries (desk/_table.html), as its poll sends them."""
    return dict(re.findall(r'<input type="hidden" form="desk-filters" name="(\w+)" value="([^"]*)"', html))


def _poll_desk(browser, state: dict[str, str], headers: dict[str, str], **filters: str):  # noqa: ANN001, ANN202
    data = {**EMPTY_FILTERS, **state, "stamp": "an older stamp", **filters}
    return browser.post("/desk/table", data=data, headers={**headers, **POLL})


# --- The desk queue: views, tabs, pages, searches ----------------------------------------


def test_a_queue_view_is_audited_once_and_its_polls_write_nothing(analyst, smith):
    user, browser = analyst
    headers, state = _desk(browser)
    [view] = rows(Action.LIST_VIEW)
    assert (view.user_id, view.actor, view.request_id) == (user.id, user.email, None)
    assert view.detail == 'desk queue: tab="action" sort="created desc" page="first" shown=1'
    for _ in range(3):  # the table refreshing itself every 5 s
        answer = _poll_desk(browser, state, headers)
        assert answer.status_code == 200 and smith.call_ref in answer.get_data(as_text=True)
    assert [r.detail for r in rows(Action.LIST_VIEW, Action.SEARCH)] == [view.detail]


def test_a_tab_change_and_a_page_change_are_a_persons_actions(analyst, smith):
    user, browser = analyst
    headers, _state = _desk(browser)
    tab = browser.post("/desk", data={**EMPTY_FILTERS, "tab_choice": "all"}, headers=headers)
    assert tab.status_code == 200
    cursor = encode_cursor(datetime(2026, 1, 2, 9, 0), 12345)
    browser.post("/desk", data={**EMPTY_FILTERS, "tab": "all", "page_cursor": cursor}, headers=headers)
    details = [r.detail for r in rows(Action.LIST_VIEW)]
    assert details[1:] == ['desk queue: tab="all" sort="created desc" page="first" shown=1',
                           'desk queue: tab="all" sort="created desc" page="after request 12345" shown=0']
    # The poll of the tab the analyst moved to is a refresh of what was audited.
    _poll_desk(browser, _desk_state(tab.get_data(as_text=True)), headers)
    assert len(rows(Action.LIST_VIEW, Action.SEARCH)) == 3


def test_a_desk_search_by_nhs_number_and_name_records_who_searched_for_what(analyst, smith, capture_all):  # noqa: F811
    user, browser = analyst
    headers, _state = _desk(browser)
    capture_all.clear()
    found = browser.post("/desk", data={**EMPTY_FILTERS, "tab_choice": "all", "nhs_number": "999 000 0018",
                                        "patient_name": "Smith, Margaret"}, headers=headers)
    assert found.status_code == 200 and smith.call_ref in found.get_data(as_text=True)
    [search] = rows(Action.SEARCH)
    assert (search.user_id, search.actor) == (user.id, user.email)
    assert search.detail == ('desk queue: nhs_number="999 000 0018" patient_name="Smith, Margaret" '
                             'tab="all" sort="created desc" page="first" shown=1')
    browser.post("/desk", data={**EMPTY_FILTERS, "call_ref": smith.call_ref}, headers=headers)
    assert f'call_ref="{smith.call_ref}"' in rows(Action.SEARCH)[-1].detail
    # The criteria are in the audit table, which is access-controlled, and not in the log.
    leaked = [v for v in PATIENT_VALUES if v in everything_logged(capture_all.records)]
    assert not leaked, leaked


def test_a_poll_carrying_criteria_of_its_own_is_audited_as_a_search(analyst, smith):
    _user, browser = analyst
    headers, state = _desk(browser)
    # The poll header is the client's to send: criteria never searched for on a page are
    # audited, poll or not.
    _poll_desk(browser, state, headers, s_number="S1234567")
    [search] = rows(Action.SEARCH)
    assert search.detail.startswith('desk queue: s_number="S1234567" tab="action"')


def test_search_criteria_are_cut_to_the_column_and_kept_on_one_line(analyst, smith):
    _user, browser = analyst
    headers, _state = _desk(browser)
    browser.post("/desk", data={**EMPTY_FILTERS, "patient_name": "Smith\r\nforged line " + "x" * 900,
                                "institution": "y" * 900}, headers=headers)
    [search] = rows(Action.SEARCH)
    assert "\n" not in search.detail and "\r" not in search.detail and 'patient_name="Smith\\x0d\\x0a' in search.detail
    assert len(search.detail) <= audit.DETAIL_MAX


def test_a_queue_that_fails_to_render_leaves_no_row(analyst, smith, monkeypatch):
    _user, browser = analyst

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("template broke")

    monkeypatch.setattr("app.desk.routes.htmx.render", broken)
    assert browser.get("/desk").status_code == 500
    assert rows(Action.LIST_VIEW, Action.SEARCH) == []


# --- My requests ------------------------------------------------------------------------


def test_my_requests_view_and_search_are_audited_and_the_poll_is_not(client, login_as, smith):
    user = login_as("requester")
    token = csrf_token(client, "/requests")  # the page itself: a view
    [view] = rows(Action.LIST_VIEW)
    assert (view.user_id, view.actor, view.detail) == (user.id, user.email, "my requests: page=1 shown=0")
    found = client.post("/requests", data={"q": "smith"}, headers={**HTMX, "X-CSRFToken": token})
    assert found.status_code == 200
    [search] = rows(Action.SEARCH)
    assert (search.user_id, search.detail) == (user.id, 'my requests: q="smith" page=1 shown=0')
    for query in ("smith", ""):  # the list polls with whatever the search box holds
        client.post("/requests", data={"q": query}, headers={**POLL, "X-CSRFToken": token})
    assert len(rows(Action.LIST_VIEW, Action.SEARCH)) == 2
    client.post("/requests", data={"q": "smith", "page": "2"}, headers={**HTMX, "X-CSRFToken": token})
    client.post("/requests", data={"q": "patel"}, headers={**POLL, "X-CSRFToken": token})  # never searched
    assert [r.detail for r in rows(Action.SEARCH)][1:] == ['my requests: q="smith" page=2 shown=0',
                                                          'my requests: q="patel" page=1 shown=0']


# --- The desk editor --------------------------------------------------------------------


def test_opening_the_editor_is_a_view_and_a_save_names_the_fields_and_the_analyst(analyst, smith):
    user, browser = analyst
    opened = browser.get(f"/desk/requests/{smith.call_ref}/edit", headers=HTMX)
    assert opened.status_code == 200
    [view] = rows(Action.VIEW)
    assert (view.user_id, view.actor, view.request_id) == (user.id, user.email, smith.id)
    assert view.detail == f"{smith.call_ref} desk editor"
    version = re.search(r'name="version" type="hidden" value="(\d+)"', opened.get_data(as_text=True)).group(1)
    saved = browser.post(f"/desk/requests/{smith.call_ref}/edit", headers=HTMX, data={
        "csrf_token": csrf_token(browser, "/requests"), "version": version, "status": Status.ACCEPTED.value,
        "mbp_call_ref": "NTT-4471", "imaging_uploaded_by": "J Bloggs", "assigned_to": str(user.id)})
    assert saved.status_code == 200
    [edit] = rows(Action.EDIT)
    assert (edit.user_id, edit.actor, edit.request_id) == (user.id, user.email, smith.id)
    # Field names, not values: the request's page shows the values.
    assert edit.detail == f"{smith.call_ref} changed mbp_call_ref, imaging_uploaded_by, assigned_to"
    [change] = rows(Action.STATUS_CHANGE)
    assert (change.user_id, change.actor, change.request_id) == (user.id, user.email, smith.id)
    assert change.detail == f"{smith.call_ref} New -> Accepted"


# --- Status changes by the system -------------------------------------------------------


def test_a_transfer_that_fails_in_the_worker_is_audited_as_the_transfer_engine(app, analyst, pas_patients,
                                                                             make_user):
    user, _browser = analyst
    down = upsert_node("Down PACS", "DOWNPACS", "127.0.0.1", free_port(), "local_pacs")
    away = upsert_node("Away PACS", "AWAYPACS", "127.0.0.1", free_port(), "remote")
    db.session.commit()
    export = _request(Kind.EXPORT, pas_patients[0], make_user("requester"))
    plan = service.plan_start(export, service.StartValues(study_uids=(STUDY,), source_id=down.id, dest_id=away.id))
    transfer = service.start_transfer(export, plan, user.id)
    transfer.max_attempts = 1
    db.session.commit()
    assert jobs.run_transfer(transfer.id) == TransferState.FAILED.value
    changes = [(r.user_id, r.actor, r.detail) for r in rows(Action.STATUS_CHANGE) if r.request_id == export.id]
    assert changes == [
        (user.id, user.email, f"{export.call_ref} New -> Accepted"),
        (user.id, user.email, f"{export.call_ref} Accepted -> Download Request"),
        (None, "system: transfer engine", f"{export.call_ref} Download Request -> Uploading"),
        (None, "system: transfer engine", f"{export.call_ref} Uploading -> Failed"),
    ]


def test_a_status_change_that_names_nobody_is_refused(smith):
    from app.workflow.machine import transition

    with pytest.raises(ValueError, match="names who made it"):
        transition(smith, Status.ACCEPTED, actor_id=None)
    assert smith.status == Status.NEW


def test_the_cli_status_change_is_audited_as_the_cli(runner, smith):
    result = runner.invoke(args=["requests", "set-status", smith.call_ref, "Accepted"])
    assert result.exit_code == 0, result.output
    [change] = rows(Action.STATUS_CHANGE)
    assert (change.user_id, change.actor) == (None, "cli")


# --- Refusals: 403 and CSRF -------------------------------------------------------------


def test_a_403_writes_one_row_with_who_the_method_and_the_path_only(client, login_as, smith):
    user = login_as("requester")
    assert client.get("/desk?nhs_number=9990000018").status_code == 403
    [denied] = rows(Action.ACCESS_DENIED)
    assert (denied.user_id, denied.actor, denied.request_id) == (user.id, user.email, None)
    assert denied.detail == "GET /desk" and denied.remote_addr == "127.0.0.1"
    # Someone else's request: the row names it.
    assert client.get(f"/requests/{smith.call_ref}").status_code == 403
    denied = rows(Action.ACCESS_DENIED)[-1]
    assert (denied.request_id, denied.detail) == (smith.id, f"GET /requests/{smith.call_ref}")
    assert len(rows(Action.ACCESS_DENIED)) == 2


def test_a_csrf_failure_of_a_signed_in_user_writes_one_row(analyst, smith):
    user, browser = analyst
    answer = browser.post(f"/desk/requests/{smith.call_ref}/edit?x=1", data={"version": "1", "status": "Accepted"})
    assert answer.status_code == 400 and "session has ended" in answer.get_data(as_text=True)
    [refused] = rows(Action.CSRF_FAILED)
    assert (refused.user_id, refused.actor, refused.request_id) == (user.id, user.email, smith.id)
    assert refused.detail == f"POST /desk/requests/{smith.call_ref}/edit"
    assert rows(Action.STATUS_CHANGE) == []


def test_anonymous_csrf_failures_write_no_rows(client):
    # The sign-in page is the one form a signed-out client can send: a flood of refused
    # posts must not become a flood of rows.
    for _ in range(5):
        assert client.post("/login", data={"email": "x@test.uhl", "password": "x"}).status_code == 400
    assert rows() == []


def test_the_refusal_is_audited_even_after_a_failed_statement(app, make_user):
    """A view that hit a database error and then refused: the handler rolls back first."""

    @app.route("/test-broken-then-forbidden")
    def broken_then_forbidden():  # noqa: ANN202
        with contextlib.suppress(sa.exc.DBAPIError):  # PostgreSQL now refuses all until a rollback
            db.session.execute(sa.text("SELECT no_such_column FROM users"))
        db.session.add(AuditEvent(action="half-done work", detail="must not be committed"))
        abort(403)

    user = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    answer = browser.get("/test-broken-then-forbidden")
    assert answer.status_code == 403
    assert [(r.action, r.user_id) for r in rows() if r.action != Action.SIGN_IN.value] == [
        (Action.ACCESS_DENIED.value, user.id)]


# --- The record itself ------------------------------------------------------------------


def test_record_keeps_a_detail_within_its_column_and_without_control_characters(app, make_user):
    user = make_user("analyst")
    audit.record(Action.SEARCH, user_id=user.id, detail="a\x00b\n" + "é" * 1000)
    db.session.commit()  # PostgreSQL refuses NUL in text: it must have been replaced
    [row] = rows(Action.SEARCH)
    assert row.actor == user.email  # a user id alone still names the person
    assert row.detail.startswith("a\\x00b\\x0a") and row.detail.endswith("…") and len(row.detail) == 500
