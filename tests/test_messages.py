"""Messages on a request: requester and desk, desk-only notes, replies to a request
for details (issue: messages; guideline 2.4)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Status
from app.workflow.machine import transition
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_import


@pytest.fixture
def setup(app, client, login_as, make_user, pas_patients):
    requester = login_as("requester")
    response = post_form(client, "/requests/new/import", valid_import())
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    analyst = make_user("analyst")
    desk = app.test_client()
    post_form(desk, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    return requester, analyst, desk, call_ref


def _say(browser, call_ref, body, kind="message", htmx=True):
    token = csrf_token(browser, f"/requests/{call_ref}")
    headers = {"HX-Request": "true"} if htmx else {}
    return browser.post(f"/requests/{call_ref}/messages", data={"csrf_token": token, "body": body, "kind": kind},
                        headers=headers)


def test_internal_notes_are_for_the_desk_only(client, setup):
    _requester, _analyst, desk, call_ref = setup
    assert _say(desk, call_ref, "Phoned Derby, they will upload today", kind="internal").status_code == 200
    assert _say(desk, call_ref, "We have asked Derby for the images.").status_code == 200
    desk_view = desk.get(f"/requests/{call_ref}/live").get_data(as_text=True)
    requester_view = client.get(f"/requests/{call_ref}/live").get_data(as_text=True)
    assert "Phoned Derby" in desk_view and "Internal note" in desk_view
    assert "Phoned Derby" not in requester_view
    assert "We have asked Derby for the images." in requester_view


def test_requester_cannot_write_internal_notes(client, setup):
    _requester, _analyst, desk, call_ref = setup
    _say(client, call_ref, "sneaky", kind="internal")
    desk_view = desk.get(f"/requests/{call_ref}/live").get_data(as_text=True)
    assert "sneaky" in desk_view and "Internal note" not in desk_view


def test_awaiting_details_asks_the_requester_and_a_reply_puts_it_back_in_action_required(client, setup):
    _requester, analyst, desk, call_ref = setup
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    transition(req, Status.AWAITING_DETAILS, actor_id=analyst.id, note="Which hospital did the CT in 2024?")
    db.session.commit()
    panel = client.get(f"/requests/{call_ref}/live").get_data(as_text=True)
    assert "The service desk needs more details" in panel and "Which hospital did the CT in 2024?" in panel

    def action_required() -> list[str]:
        html = post_form(desk, "/desk", {"tab_choice": "action"}, headers={"HX-Request": "true"}).get_data(as_text=True)
        return re.findall(r'<tr id="row-(IEP-\d{4}-\d{6})"', html)

    assert call_ref not in action_required()  # waiting on the requester
    assert _say(client, call_ref, "Glenfield, March 2024").status_code == 200
    assert call_ref in action_required()  # the reply needs the desk's eyes


def test_empty_message_is_refused_and_nothing_saved(client, setup):
    _requester, _analyst, _desk, call_ref = setup
    response = _say(client, call_ref, "   ")
    assert response.status_code == 422
    assert "Write a message before sending it." in response.get_data(as_text=True)


def test_message_without_javascript_redirects_back_to_the_request(client, setup):
    *_rest, call_ref = setup
    response = _say(client, call_ref, "Any news?", htmx=False)
    assert response.status_code == 302 and response.headers["Location"].startswith(f"/requests/{call_ref}")


def test_messages_are_escaped(client, setup):
    *_rest, desk, call_ref = setup
    _say(client, call_ref, "<img src=x onerror=alert(1)>")
    html = desk.get(f"/requests/{call_ref}/live").get_data(as_text=True)
    assert "<img src=x" not in html and "&lt;img src=x" in html


def test_another_requester_cannot_read_or_write_the_thread(app, setup, make_user):
    *_rest, call_ref = setup
    other = make_user("requester")
    stranger = app.test_client()
    post_form(stranger, "/login", {"email": other.email, "password": "correct-horse-9"})
    assert stranger.get(f"/requests/{call_ref}/live").status_code == 403
    token = csrf_token(stranger, "/requests")
    assert stranger.post(f"/requests/{call_ref}/messages", data={"csrf_token": token, "body": "hi"}).status_code == 403


def test_request_page_shows_the_thread_and_a_reply_box(client, setup):
    _requester, _analyst, desk, call_ref = setup
    _say(desk, call_ref, "Derby will upload today.")
    page = client.get(f"/requests/{call_ref}").get_data(as_text=True)
    assert "Derby will upload today." in page
    assert f'hx-post="/requests/{call_ref}/messages"' in page and 'id="live"' in page


def test_my_requests_refresh_themselves(client, setup):
    *_rest, call_ref = setup
    page = client.get("/requests").get_data(as_text=True)
    assert 'hx-trigger="every 10s"' in page and call_ref in page
