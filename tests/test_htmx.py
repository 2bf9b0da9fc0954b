"""One HTMX helper (issue 9.6): app/htmx.py, and every view that answers htmx through it.

htmx sends `HX-Request: true` on a history restore too (`HX-History-Restore-Request:
true`, after Back on a page whose snapshot is not cached — base.html sets
hx-history="false"), and must then get the whole page. A URL that answers a fragment or a
page says `Vary: HX-Request` on both.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask, Response
from jinja2 import DictLoader

from app import htmx
from app.extensions import db
from app.requests.models import Request
from app.transfers import service
from app.transfers.cli import upsert_node
from app.transfers.models import Transfer
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_export, valid_import

PLAIN: dict[str, str] = {}
HTMX = {"HX-Request": "true"}
RESTORE = {"HX-Request": "true", "HX-History-Restore-Request": "true"}


def _varies(response) -> bool:  # noqa: ANN001
    return "hx-request" in {v.lower() for v in response.vary}


def _is_page(html: str) -> bool:
    return html.lstrip().lower().startswith("<!doctype html")


# --- app/htmx.py on its own --------------------------------------------------------------------


@pytest.fixture
def bare() -> Flask:
    """A Flask app with two templates and nothing else: the helper needs only Flask."""
    app = Flask("htmx_unit")
    app.jinja_loader = DictLoader(
        {"page.html": "<!doctype html><p>page {{ n }}</p>", "_frag.html": "<p>frag {{ n }}</p>"}
    )
    return app


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (PLAIN, False),
        (HTMX, True),
        (RESTORE, False),
        ({"HX-Request": "false"}, False),
        ({"HX-Request": "true", "HX-History-Restore-Request": "false"}, True),
        ({"HX-History-Restore-Request": "true"}, False),
    ],
)
def test_is_htmx_is_true_only_for_htmx_requests_that_are_not_history_restores(bare, headers, expected):
    with bare.test_request_context("/", headers=headers):
        assert htmx.is_htmx() is expected


@pytest.mark.parametrize("headers", [PLAIN, HTMX, RESTORE])
def test_asking_is_htmx_marks_whatever_the_view_answers_vary_hx_request(bare, headers):
    with bare.test_request_context("/", headers=headers):
        htmx.is_htmx()
        htmx.is_htmx()  # asked twice, noted once
        response = bare.process_response(Response("anything"))
    assert list(response.vary) == ["HX-Request"]


def test_a_request_that_never_asks_gets_no_vary_from_the_helper(bare):
    with bare.test_request_context("/"):
        response = bare.process_response(Response("anything"))
    assert "Vary" not in response.headers


@pytest.mark.parametrize(("headers", "body"), [(PLAIN, "<!doctype html><p>page 3</p>"), (HTMX, "<p>frag 3</p>"),
                                               (RESTORE, "<!doctype html><p>page 3</p>")])
def test_render_gives_the_fragment_to_htmx_and_the_page_otherwise_with_vary(bare, headers, body):
    with bare.test_request_context("/", headers=headers):
        response = htmx.render("page.html", "_frag.html", n=3)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == body
    assert _varies(response)


def test_render_keeps_the_status_given(bare):
    with bare.test_request_context("/", headers=HTMX):
        response = htmx.render("page.html", "_frag.html", status=422, n=1)
    assert response.status_code == 422
    assert response.get_data(as_text=True) == "<p>frag 1</p>"


@pytest.mark.parametrize("headers", [PLAIN, RESTORE])
def test_redirect_to_sends_a_browser_and_a_history_restore_a_302(bare, headers):
    with bare.test_request_context("/", headers=headers):
        response = htmx.redirect_to("/requests/IEP-1#transfers")
    assert response.status_code == 302
    assert response.headers["Location"] == "/requests/IEP-1#transfers"
    assert "HX-Redirect" not in response.headers
    assert _varies(response)


@pytest.mark.parametrize("status", [200, 401])
def test_redirect_to_answers_htmx_with_hx_redirect_and_no_location(bare, status):
    with bare.test_request_context("/", headers=HTMX):
        response = htmx.redirect_to("/login?next=/desk", **({"htmx_status": status} if status != 200 else {}))
    assert response.status_code == status
    assert response.headers["HX-Redirect"] == "/login?next=/desk"
    assert "Location" not in response.headers
    assert response.get_data() == b""
    assert _varies(response)


def test_install_marks_every_answer_to_htmx_vary(bare):
    htmx.install(bare)
    bare.add_url_rule("/poll", "poll", lambda: "<p>same for everyone</p>")
    client = bare.test_client()
    assert _varies(client.get("/poll", headers=HTMX))
    assert "Vary" not in client.get("/poll").headers


# --- The views: page, fragment, history restore ------------------------------------------------


@pytest.fixture
def analyst(app, make_user):
    user = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return browser


@pytest.fixture
def import_request(client, login_as, pas_patients) -> Request:
    """An import request made by the `client`'s requester."""
    login_as("requester")
    response = post_form(client, "/requests/new/import", valid_import())
    assert response.status_code == 302
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def _three_ways(browser, url: str):  # noqa: ANN001, ANN202
    return [browser.get(url, headers=headers) for headers in (PLAIN, HTMX, RESTORE)]


def _check_page_fragment_page(answers, fragment_marker: str, status: int = 200) -> None:  # noqa: ANN001
    plain, fragment, restored = answers
    for answer in answers:
        assert answer.status_code == status
        assert _varies(answer), answer.headers
    assert _is_page(plain.get_data(as_text=True))
    assert fragment_marker in plain.get_data(as_text=True)  # the page holds the fragment
    html = fragment.get_data(as_text=True)
    assert not _is_page(html) and "<html" not in html and fragment_marker in html
    assert _is_page(restored.get_data(as_text=True)) and fragment_marker in restored.get_data(as_text=True)


def test_desk_queue_page_table_fragment_and_restored_page(analyst, import_request):
    _check_page_fragment_page(_three_ways(analyst, "/desk"), 'id="desk-table"')


def test_desk_editor_page_fragment_and_restored_page(analyst, import_request):
    answers = _three_ways(analyst, f"/desk/requests/{import_request.call_ref}/edit")
    _check_page_fragment_page(answers, 'class="editor-panel"')
    assert "Back to the queue" in answers[0].get_data(as_text=True)
    assert "Back to the queue" not in answers[1].get_data(as_text=True)


def test_my_requests_page_rows_fragment_and_restored_page(client, import_request):
    answers = _three_ways(client, "/requests")
    _check_page_fragment_page(answers, 'id="my-requests"')
    assert import_request.call_ref in answers[1].get_data(as_text=True)


def test_error_page_fragment_and_restored_page(client, login_as):
    login_as("requester")
    answers = _three_ways(client, "/no-such-page")
    _check_page_fragment_page(answers, 'class="error-page"', status=404)
    assert "Back to the start page" not in answers[1].get_data(as_text=True)


def test_forbidden_desk_answers_htmx_with_the_error_fragment(client, login_as):
    login_as("requester")
    _check_page_fragment_page(_three_ways(client, "/desk"), 'class="error-page"', status=403)


def test_expired_session_answers_htmx_with_hx_redirect_and_a_restore_with_a_302(client):
    plain, fragment, restored = _three_ways(client, "/desk")
    assert fragment.status_code == 401
    assert fragment.headers["HX-Redirect"].startswith("/login?next=/desk")
    assert "Location" not in fragment.headers
    for answer in (plain, restored):  # a restore follows the 302 and shows the sign-in page
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/login?next=/desk")
        assert "HX-Redirect" not in answer.headers
    assert all(_varies(a) for a in (plain, fragment, restored))


def test_adding_an_exam_line_answers_htmx_with_the_lines_and_a_browser_with_the_form(client, login_as, pas_patients):
    login_as("requester")
    data = {**valid_import(), "action": "add_exam"}
    fragment = post_form(client, "/requests/new/import", data, headers=HTMX)
    page = post_form(client, "/requests/new/import", data)
    assert fragment.status_code == page.status_code == 200
    assert 'id="exam-lines"' in fragment.get_data(as_text=True) and not _is_page(fragment.get_data(as_text=True))
    assert _is_page(page.get_data(as_text=True)) and 'id="exam-lines"' in page.get_data(as_text=True)
    assert _varies(fragment) and _varies(page)


def test_saving_in_the_editor_answers_htmx_with_the_row_and_a_browser_with_a_redirect(analyst, import_request):
    url = f"/desk/requests/{import_request.call_ref}/edit"

    def save(headers):  # noqa: ANN001, ANN202
        db.session.expire_all()
        req = db.session.get(Request, import_request.id)
        data = {"csrf_token": csrf_token(analyst, url), "version": str(req.version), "status": req.status.value,
                "note": ""}
        return analyst.post(url, data=data, headers=headers)

    fragment, plain = save(HTMX), save(PLAIN)
    assert fragment.status_code == 200 and f'id="entry-{import_request.call_ref}"' in fragment.get_data(as_text=True)
    assert not _is_page(fragment.get_data(as_text=True))
    assert plain.status_code == 302 and plain.headers["Location"] == "/desk"
    assert _varies(fragment) and _varies(plain)


def test_a_message_answers_htmx_with_the_panel_and_a_browser_with_a_redirect(client, import_request):
    url = f"/requests/{import_request.call_ref}/messages"

    def say(headers, body="Any news?"):  # noqa: ANN001, ANN202
        token = csrf_token(client, f"/requests/{import_request.call_ref}")
        return client.post(url, data={"csrf_token": token, "body": body, "kind": "message"}, headers=headers)

    fragment, plain = say(HTMX), say(PLAIN)
    assert fragment.status_code == 200 and 'id="live"' in fragment.get_data(as_text=True)
    assert plain.status_code == 302 and plain.headers["Location"].endswith("#messages")
    refused_fragment, refused_plain = say(HTMX, body=""), say(PLAIN, body="")
    assert refused_fragment.status_code == 422 and 'id="live"' in refused_fragment.get_data(as_text=True)
    assert refused_plain.status_code == 302
    assert all(_varies(a) for a in (fragment, plain, refused_fragment, refused_plain))


def test_the_live_panel_is_a_fragment_and_says_vary_to_htmx(client, import_request):
    answer = client.get(f"/requests/{import_request.call_ref}/live", headers=HTMX)
    assert answer.status_code == 200 and 'id="live"' in answer.get_data(as_text=True) and _varies(answer)


def test_a_refused_transfer_start_answers_htmx_in_place_and_a_browser_with_a_302(analyst, import_request):
    """htmx: the refusal's words for the space beside the button (422, swapped in place,
    so the search results and what was ticked stay); a browser: back to the page."""
    url = f"/requests/{import_request.call_ref}/transfers"
    token = csrf_token(analyst, f"/requests/{import_request.call_ref}")
    fragment = analyst.post(url, data={"csrf_token": token, "study_uid": "1.2.3"}, headers=HTMX)
    plain = analyst.post(url, data={"csrf_token": token, "study_uid": "1.2.3"})
    target = f"/requests/{import_request.call_ref}#transfers"
    assert fragment.status_code == 422
    assert fragment.get_data(as_text=True) == "Choose the node to take the studies from."
    assert "HX-Redirect" not in fragment.headers and "Location" not in fragment.headers
    assert plain.status_code == 302 and plain.headers["Location"] == target
    assert _varies(fragment) and _varies(plain)


def test_pacs_search_results_are_a_fragment_and_say_vary_to_htmx(analyst, client, login_as, pas_patients):
    login_as("requester")
    response = post_form(client, "/requests/new/export", valid_export())
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    token = csrf_token(analyst, f"/requests/{call_ref}")
    answer = analyst.post(f"/requests/{call_ref}/pacs-search", data={"csrf_token": token}, headers=HTMX)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and 'id="pacs-results"' in html and not _is_page(html)
    assert "No node to search" in html
    assert _varies(answer)


def _transfer(req: Request, uid: str) -> Transfer:
    transfer = Transfer(request_id=req.id, direction="pull", priority="Standard", study_uids=[uid],
                        study_key=service.study_key([uid]))
    db.session.add(transfer)
    db.session.commit()
    return transfer


def test_transfer_widget_and_its_buttons(analyst, import_request):
    first, second = _transfer(import_request, "1.2.3.1"), _transfer(import_request, "1.2.3.2")
    widget = analyst.get(f"/transfers/{first.id}", headers=HTMX)
    assert widget.status_code == 200 and f'id="transfer-{first.id}"' in widget.get_data(as_text=True)
    assert _varies(widget)
    token = csrf_token(analyst, f"/requests/{import_request.call_ref}")
    fragment = analyst.post(f"/transfers/{first.id}/cancel", data={"csrf_token": token}, headers=HTMX)
    plain = analyst.post(f"/transfers/{second.id}/cancel", data={"csrf_token": token})
    html = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and f'id="transfer-{first.id}"' in html and not _is_page(html)
    assert plain.status_code == 302 and plain.headers["Location"] == f"/requests/{import_request.call_ref}#transfers"
    assert _varies(fragment) and _varies(plain)


def test_node_echo_answers_htmx_with_the_result_and_a_browser_with_a_redirect(app, make_user):
    admin = make_user("am_radiology")
    browser = app.test_client()
    post_form(browser, "/login", {"email": admin.email, "password": "correct-horse-9"})
    node = upsert_node("Nobody home", "NOBODY", "127.0.0.1", 9, "remote")
    db.session.commit()
    token = csrf_token(browser, "/admin/nodes")
    fragment = browser.post(f"/admin/nodes/{node.id}/echo", data={"csrf_token": token}, headers=HTMX)
    plain = browser.post(f"/admin/nodes/{node.id}/echo", data={"csrf_token": token})
    assert fragment.status_code == 200 and f'id="echo-{node.id}"' in fragment.get_data(as_text=True)
    assert plain.status_code == 302 and plain.headers["Location"] == "/admin/nodes"
    assert _varies(fragment) and _varies(plain)
