"""The analyst workbench (issue: queue, inline edits, status machine, access)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.audit import AuditEvent
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import CD_ONLY, Status
from app.timeutil import freeze, utcnow
from app.workflow.machine import ALLOWED, TransitionRefused, allowed_next, transition
from app.workflow.models import Message
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_cd, valid_export, valid_import

S = Status


@pytest.fixture
def requests_made(app, client, login_as, pas_patients):
    """Three requests by one requester: Blue Light import, standard export, CD."""
    user = login_as("requester")
    post_form(client, "/requests/new/import",
              {**valid_import(), "priority": "Blue Light", "priority_reason": "Theatre 14:00"})
    post_form(client, "/requests/new/export", valid_export())
    post_form(client, "/requests/new/cd", {**valid_cd(), "s_number": "S7654321", "nhs_number": "9990000026",
                                           "family_name": "Patel", "given_name": "Ravi", "dob": "1975-11-02"})
    refs = list(db.session.scalars(sa.select(Request.call_ref).order_by(Request.id)))
    assert len(refs) == 3
    return user, refs


@pytest.fixture
def analyst(app, make_user):
    user = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return user, browser


def _req(call_ref: str) -> Request:
    db.session.expire_all()
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def _editor_token(browser, call_ref):
    html = browser.get(f"/desk/requests/{call_ref}/edit", headers={"HX-Request": "true"}).get_data(as_text=True)
    version = re.search(r'name="version" type="hidden" value="(\d+)"', html).group(1)
    return csrf_token(browser, f"/desk/requests/{call_ref}/edit"), version


def _save(browser, call_ref, version, token, **fields):
    data = {"csrf_token": token, "version": version,
            "status": fields.pop("status", _req(call_ref).status.value), **fields}
    return browser.post(f"/desk/requests/{call_ref}/edit", data=data, headers={"HX-Request": "true"})


# --- Access ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["requester", "radiologist"])
def test_non_desk_roles_get_403_on_the_desk(client, login_as, role):
    login_as(role)
    assert client.get("/desk").status_code == 403
    assert client.post("/desk/table", data={"csrf_token": csrf_token(client, "/requests")}).status_code == 403


@pytest.mark.parametrize("role", ["analyst", "am_radiology", "admin"])
def test_desk_roles_reach_the_desk(client, login_as, role):
    login_as(role)
    page = client.get("/desk")
    assert page.status_code == 200 and "Action Required" in page.get_data(as_text=True)


# --- The status machine ----------------------------------------------------------------

# Sorted: every test process (pytest-xdist) must collect the same list in the same order.
ALLOWED_PAIRS = [(a, b) for a, targets in ALLOWED.items() for b in sorted(targets)]
REFUSED_SAMPLE = [
    (S.NEW, S.DELIVERED), (S.NEW, S.COMPLETED), (S.COMPLETED, S.NEW), (S.CANCELLED, S.ACCEPTED),
    (S.DELIVERED, S.NEW), (S.ON_IEP, S.NEW), (S.AWAITING_DETAILS, S.DELIVERED), (S.FAILED, S.COMPLETED),
    (S.DOWNLOADING, S.ACCEPTED), (S.PURGED, S.DELIVERED),
]


def _force(req: Request, status: Status) -> None:
    req.status = status
    db.session.commit()


@pytest.mark.parametrize(("old", "new"), ALLOWED_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALLOWED_PAIRS])
def test_every_allowed_transition_is_accepted_and_audited(requests_made, old, new):
    # The CD round's statuses are a CD import's only: those pairs move the CD request.
    req = _req(requests_made[1][2 if {old, new} & CD_ONLY else 1])
    _force(req, old)
    # Declined needs the other institution's words, Awaiting Details what is missing (issue 13.7).
    transition(req, new, actor_id=None, actor="test", note="their words" if new in (S.DECLINED, S.AWAITING_DETAILS)
               else "", decline_reason="other" if new == S.DECLINED else "")
    db.session.commit()
    assert _req(req.call_ref).status == new
    detail = db.session.scalar(sa.select(AuditEvent.detail).where(AuditEvent.action == "status_change"))
    assert detail == f"{req.call_ref} {old.value} -> {new.value}"


@pytest.mark.parametrize(("old", "new"), REFUSED_SAMPLE, ids=[f"{a.value}->{b.value}" for a, b in REFUSED_SAMPLE])
def test_refused_transition_says_which_are_allowed(requests_made, old, new):
    req = _req(requests_made[1][1])
    _force(req, old)
    with pytest.raises(TransitionRefused) as refused:
        transition(req, new, actor_id=None, actor="test")
    message = str(refused.value)
    assert f"cannot become {new.value}" in message
    for allowed in allowed_next(old, req.kind):
        assert allowed.value in message
    db.session.rollback()
    assert _req(req.call_ref).status == old


def test_decline_needs_the_other_institutions_reason_and_can_be_reprocessed(requests_made):
    req = _req(requests_made[1][0])
    with pytest.raises(TransitionRefused, match="Say why"):
        transition(req, S.DECLINED, actor_id=None, actor="test")
    with pytest.raises(TransitionRefused, match="Give the other institution's reason"):
        transition(req, S.DECLINED, actor_id=None, actor="test", decline_reason="other")
    transition(req, S.DECLINED, actor_id=None, actor="test", decline_reason="not_found")
    db.session.commit()
    req = _req(req.call_ref)
    assert req.decline_reason == "not_found"
    transition(req, S.ACCEPTED, actor_id=None, actor="test", note="Re-requested from Derby instead")  # guideline 2.5 b
    db.session.commit()
    bodies = list(db.session.scalars(sa.select(Message.body).where(Message.request_id == req.id)))
    assert any("does not exist at that organisation" in b for b in bodies)


def test_cli_uses_the_same_status_machine(runner, requests_made):
    ref = requests_made[1][0]
    refused = runner.invoke(args=["requests", "set-status", ref, "Delivered"])
    assert refused.exit_code != 0 and "From New it can become" in refused.output
    ok = runner.invoke(args=["requests", "set-status", ref, "Accepted"])
    assert ok.exit_code == 0 and _req(ref).status == S.ACCEPTED


# --- Inline edits ----------------------------------------------------------------------


def test_inline_edit_answers_with_the_updated_row(requests_made, analyst):
    user, browser = analyst
    ref = requests_made[1][1]
    token, version = _editor_token(browser, ref)
    response = _save(browser, ref, version, token, status="Accepted", assigned_to=str(user.id),
                     mbp_call_ref="NTT-4411", imaging_uploaded_by="J Bloggs", images_fixed_up_by="",
                     date_imaging_sent="2026-11-01")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    # The request's <tbody>: its new row, the editor closed, focus back on Edit.
    entry = re.search(rf'<tbody id="entry-{ref}" class="queue-entry" data-focus="edit">.*?</tbody>',
                      html, re.S).group(0)
    row = re.search(rf'<tr id="row-{ref}".*?</tr>', entry, re.S).group(0)
    assert "Accepted" in row and user.name in row
    assert "editor-row" not in entry and "editor-panel" not in html
    assert f"{ref} saved." in html
    req = _req(ref)
    assert (req.status, req.assigned_to_id, req.mbp_call_ref, req.imaging_uploaded_by) == (
        S.ACCEPTED, user.id, "NTT-4411", "J Bloggs")
    actions = list(db.session.scalars(sa.select(AuditEvent.detail).where(
        AuditEvent.request_id == req.id, AuditEvent.action.in_(["edit", "status_change"]))))
    assert f"{ref} New -> Accepted" in actions
    assert any("mbp_call_ref" in a and "assigned_to" in a for a in actions)


def test_second_analyst_saving_a_stale_version_is_refused_with_current_values(app, requests_made, analyst, make_user):
    first_user, first = analyst
    ref = requests_made[1][1]
    second_user = make_user("am_radiology")
    second = app.test_client()
    post_form(second, "/login", {"email": second_user.email, "password": "correct-horse-9"})
    token1, version1 = _editor_token(first, ref)
    token2, version2 = _editor_token(second, ref)
    assert version1 == version2
    assert _save(first, ref, version1, token1, mbp_call_ref="FIRST").status_code == 200
    refused = _save(second, ref, version2, token2, mbp_call_ref="SECOND", status="Accepted")
    html = refused.get_data(as_text=True)
    assert refused.status_code == 409
    assert "Someone else changed this request" in html and "FIRST" in html
    assert 'value="SECOND"' in html  # their typing is kept
    req = _req(ref)
    assert req.mbp_call_ref == "FIRST" and req.status == S.NEW
    # A deliberate second save (with the version the conflict page handed out) wins.
    new_version = re.search(r'name="version" type="hidden" value="(\d+)"', html).group(1)
    assert _save(second, ref, new_version, token2, mbp_call_ref="SECOND").status_code == 200
    assert _req(ref).mbp_call_ref == "SECOND"


def test_invalid_transition_from_the_page_is_refused_with_the_allowed_list(requests_made, analyst):
    _user, browser = analyst
    ref = requests_made[1][1]
    token, version = _editor_token(browser, ref)
    response = _save(browser, ref, version, token, status="Completed")
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "cannot become Completed" in html and "Awaiting Details" in html
    assert _req(ref).status == S.NEW


def test_plain_form_post_without_javascript_works(requests_made, analyst):
    _user, browser = analyst
    ref = requests_made[1][2]
    page = browser.get(f"/desk/requests/{ref}/edit").get_data(as_text=True)
    assert "<html" in page  # a full page when not asked by HTMX
    version = re.search(r'name="version" type="hidden" value="(\d+)"', page).group(1)
    token = csrf_token(browser, f"/desk/requests/{ref}/edit")
    response = browser.post(f"/desk/requests/{ref}/edit", data={
        "csrf_token": token, "version": version, "status": "Awaiting Details",
        "note": "Please give the CD's study date", "mbp_call_ref": "", "imaging_uploaded_by": "",
        "images_fixed_up_by": "", "date_imaging_sent": "", "assigned_to": "", "decline_reason": ""})
    assert response.status_code == 302 and response.headers["Location"] == "/desk"
    assert _req(ref).status == S.AWAITING_DETAILS


# --- Queue, tabs, search ---------------------------------------------------------------


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr id="row-(IEP-\d{4}-\d{6})"', html)


def _counts(html: str) -> dict[str, int]:
    tabs = re.findall(r'class="tab[^"]*"[^>]*>([^<]*)<span class="count">\((\d+)\)', html)
    return {k.strip(): int(v) for k, v in tabs}


def test_tabs_count_and_blue_light_sits_on_top_with_time_left(requests_made, analyst):
    _user, browser = analyst
    refs = requests_made[1]
    page = browser.get("/desk").get_data(as_text=True)
    assert _rows(page)[0] == refs[0]  # the Blue Light import, although oldest
    assert re.search(r"[34] h \d+ min left", page)
    assert _counts(page) == {"Action Required": 3, "Accepted": 0, "In Progress": 0, "Failed": 0, "CD round": 1,
                            "All": 3}
    transition(_req(refs[1]), S.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    page = post_form(browser, "/desk", {"tab_choice": "accepted"},
                     headers={"HX-Request": "true"}).get_data(as_text=True)
    assert _rows(page) == [refs[1]]
    assert _counts(page)["Action Required"] == 2


def test_breached_blue_light_is_marked(requests_made, analyst):
    _user, browser = analyst
    with freeze(utcnow() + timedelta(hours=5)):
        page = browser.get("/desk").get_data(as_text=True)
    assert "Target breached" in page and 'class="blue-light-row breached"' in page


SEARCHES = [
    ("call_ref", lambda refs: refs[2], [2]),
    ("patient_name", lambda refs: "pat", [2]),
    ("patient_name", lambda refs: "SMITH, marg", [0, 1]),
    ("nhs_number", lambda refs: "999 000 0026", [2]),
    ("s_number", lambda refs: "s1234567", [0, 1]),
    ("institution", lambda refs: "kettering", [1]),
    ("kind", lambda refs: "cd", [2]),
    ("status", lambda refs: "New", [0, 1]),
    ("status", lambda refs: "Awaiting Drop-off", [2]),
    ("priority", lambda refs: "Blue Light", [0]),
    ("date_from", lambda refs: "2000-01-01", [0, 1, 2]),
    ("date_to", lambda refs: "2000-01-01", []),
    ("assigned", lambda refs: "none", [0, 1, 2]),
    ("assigned", lambda refs: "me", []),
]


@pytest.mark.parametrize(("field", "value", "expected"), SEARCHES,
                         ids=[f"{f}-{i}" for i, (f, _v, _e) in enumerate(SEARCHES)])
def test_search_with_each_filter(requests_made, analyst, field, value, expected):
    _user, browser = analyst
    refs = requests_made[1]
    html = post_form(browser, "/desk", {"tab_choice": "all", field: value(refs)},
                     headers={"HX-Request": "true"}).get_data(as_text=True)
    assert sorted(_rows(html)) == sorted(refs[i] for i in expected)


def test_filter_by_a_colleague_from_the_page_the_table_and_without_script(requests_made, analyst, make_user):
    """"Assigned to" a named colleague: the whole page offers the desk's people; the table
    alone (htmx, which does not read them) filters by the id all the same; a plain post
    (no script) answers the page with that colleague still chosen."""
    _user, browser = analyst
    refs = requests_made[1]
    colleague = make_user("am_radiology")
    _req(refs[1]).assigned_to_id = colleague.id
    db.session.commit()
    page = browser.get("/desk").get_data(as_text=True)
    assert f'<option value="{colleague.id}">{colleague.name}</option>' in page
    table = post_form(browser, "/desk", {"tab_choice": "all", "assigned": str(colleague.id)},
                      headers={"HX-Request": "true"}).get_data(as_text=True)
    assert _rows(table) == [refs[1]]
    plain = post_form(browser, "/desk", {"tab_choice": "all", "assigned": str(colleague.id)}).get_data(as_text=True)
    assert _rows(plain) == [refs[1]]
    assert f'<option selected value="{colleague.id}">{colleague.name}</option>' in plain


def test_sorting_and_keyset_pages(app, requests_made, analyst, monkeypatch):
    _user, browser = analyst
    from app.desk import queries

    real = queries.queue_page
    monkeypatch.setattr("app.desk.routes.queue_page", lambda **kw: real(**{**kw, "size": 1}))
    refs = requests_made[1]
    first = post_form(browser, "/desk", {"tab_choice": "all", "sort_choice": "call_ref"},
                      headers={"HX-Request": "true"}).get_data(as_text=True)
    # Sorting by call reference starts A-Z; the Blue Light request stays pinned on top.
    assert _rows(first) == [refs[0], refs[1]]
    cursor = re.search(r'name="page_cursor" value="([^"]+)"', first).group(1)
    second = post_form(browser, "/desk", {"tab": "all", "sort": "call_ref", "direction": "asc", "page_cursor": cursor},
                       headers={"HX-Request": "true"}).get_data(as_text=True)
    assert _rows(second) == [refs[2]]
    flipped = post_form(browser, "/desk",
                        {"tab": "all", "sort": "call_ref", "direction": "asc", "sort_choice": "call_ref"},
                        headers={"HX-Request": "true"}).get_data(as_text=True)
    assert _rows(flipped) == [refs[0], refs[2]]


def test_poll_answers_204_when_nothing_changed_and_keeps_filters(requests_made, analyst):
    _user, browser = analyst
    refs = requests_made[1]
    token = csrf_token(browser, "/desk")
    headers = {"HX-Request": "true", "X-CSRFToken": token}
    html = browser.post("/desk/table", data={"tab": "all", "kind": "cd"}, headers=headers).get_data(as_text=True)
    assert _rows(html) == [refs[2]]
    stamp = re.search(r'name="stamp" value="([^"]+)"', html).group(1)
    data = {"tab": "all", "kind": "cd", "stamp": stamp}
    assert browser.post("/desk/table", data=data, headers=headers).status_code == 204
    transition(_req(refs[2]), S.COLLECTED, actor_id=None, actor="test")
    db.session.commit()
    again = browser.post("/desk/table", data={"tab": "all", "kind": "cd", "stamp": stamp}, headers=headers)
    assert again.status_code == 200 and "Collected" in again.get_data(as_text=True)
    assert _rows(again.get_data(as_text=True)) == [refs[2]]


def test_queue_page_uses_a_fixed_number_of_queries(app, requests_made, analyst):
    _user, browser = analyst
    from sqlalchemy import event

    def count_queries() -> int:
        statements: list[str] = []

        def before(conn, cursor, statement, *args):  # noqa: ANN001
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", before)
        try:
            post_form(browser, "/desk", {"tab_choice": "all"}, headers={"HX-Request": "true"})
        finally:
            event.remove(db.engine, "before_cursor_execute", before)
        return len([s for s in statements if "requests" in s])

    few = count_queries()
    # Nine more requests must not mean nine more queries (no N+1 on rows).
    user = _req(requests_made[1][0]).requester_id
    for i in range(9):
        original = _req(requests_made[1][1])
        clone = Request(call_ref=f"IEP-1999-{i:06d}", kind=original.kind, requester_id=user,
                        patient_id=original.patient_id, s_number="S1234567", family_name="SMITH",
                        given_name="M", dob=original.dob, contact_name="x", assigned_to_id=_user.id)
        db.session.add(clone)
    db.session.commit()
    assert count_queries() == few


# --- Needed by, and the requester's reply (issue 13.3) --------------------------------------


def _cell(html: str, ref: str, css: str) -> str:
    row = re.search(rf'<tr id="row-{ref}".*?</tr>', html, re.S).group(0)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.search(rf'<td class="{css}">(.*?)</td>', row, re.S)
                                      .group(1))).strip()


def test_needed_by_shows_the_date_and_says_when_it_is_today_or_past(requests_made, analyst):
    from app.timeutil import local_today

    _user, browser = analyst
    refs = requests_made[1]
    today = local_today()
    for ref, day in zip(refs, [today - timedelta(days=1), today, None], strict=True):
        _req(ref).required_by = day
        db.session.commit()  # before the next _req() expires it
    html = post_form(browser, "/desk", {"tab_choice": "all"}).get_data(as_text=True)
    assert ">Needed by</th>" in html
    assert _cell(html, refs[0], "needed-by") == f"{today - timedelta(days=1):%d/%m/%Y} overdue"
    assert _cell(html, refs[1], "needed-by") == f"{today:%d/%m/%Y} today"
    assert _cell(html, refs[2], "needed-by") == "—"
    # Once the request is closed, its date is only a date.
    transition(_req(refs[1]), S.CANCELLED, actor_id=None, actor="test")
    db.session.commit()
    html = post_form(browser, "/desk", {"tab_choice": "all"}).get_data(as_text=True)
    assert _cell(html, refs[1], "needed-by") == f"{today:%d/%m/%Y}"


DESK, REQUESTER, NOBODY = "desk", "requester", "nobody"
# Who wrote what, oldest first -> whether the row says the requester replied.
CONVERSATIONS = {
    "desk_asked_requester_answered": ([(DESK, "message"), (REQUESTER, "message")], True),
    "requester_wrote_first_nobody_answered": ([(REQUESTER, "message")], True),
    "desk_answered_the_reply": ([(DESK, "message"), (REQUESTER, "message"), (DESK, "message")], False),
    "a_desk_note_is_not_an_answer": ([(DESK, "message"), (REQUESTER, "message"), (DESK, "internal")], True),
    "a_status_change_with_its_note_answers": ([(REQUESTER, "message"), (DESK, "system")], False),
    "an_automatic_status_change_does_not": ([(DESK, "message"), (REQUESTER, "message"), (NOBODY, "system")], True),
    "only_the_desk_wrote": ([(DESK, "message")], False),
    "nobody_wrote": ([], False),
}


@pytest.mark.parametrize(("said", "replied"), CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_requester_replied_badge(requests_made, analyst, said, replied):
    user, browser = analyst
    requester, refs = requests_made
    req = _req(refs[1])
    start = utcnow() - timedelta(hours=len(said) + 1)
    authors = {DESK: user.id, REQUESTER: requester.id, NOBODY: None}
    for hours, (who, kind) in enumerate(said):
        db.session.add(Message(request_id=req.id, author_id=authors[who], kind=kind, body="…",
                               created_at=start + timedelta(hours=hours)))
    db.session.commit()
    html = post_form(browser, "/desk", {"tab_choice": "all"}).get_data(as_text=True)
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr id="row-(IEP-\d{4}-\d{6})".*?</tr>', html, re.S)}
    assert ("Requester replied" in rows[refs[1]]) is replied
    assert not any("Requester replied" in rows[ref] for ref in (refs[0], refs[2]))


def test_replied_badges_cost_one_query_for_the_whole_page(app, requests_made, analyst):
    """Ten replied requests are read with the queries of one (no query per row)."""
    from sqlalchemy import event

    user, browser = analyst
    requester, refs = requests_made

    def replied_to(req: Request) -> None:
        db.session.add_all([
            Message(request_id=req.id, author_id=user.id, kind="message", body="?", created_at=utcnow()
                    - timedelta(hours=2)),
            Message(request_id=req.id, author_id=requester.id, kind="message", body="!", created_at=utcnow()
                    - timedelta(hours=1)),
        ])

    def queries() -> tuple[int, str]:
        statements: list[str] = []

        def before(conn, cursor, statement, *args):  # noqa: ANN001
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", before)
        try:
            html = post_form(browser, "/desk", {"tab_choice": "all"}).get_data(as_text=True)
        finally:
            event.remove(db.engine, "before_cursor_execute", before)
        return len(statements), html

    replied_to(_req(refs[1]))
    db.session.commit()
    few, html = queries()
    assert html.count("Requester replied") == 1
    original = _req(refs[1])
    for i in range(9):
        clone = Request(call_ref=f"IEP-1999-{i:06d}", kind=original.kind, requester_id=requester.id,
                        patient_id=original.patient_id, s_number="S1234567", family_name="SMITH",
                        given_name="M", dob=original.dob, contact_name="x")
        db.session.add(clone)
        db.session.flush()
        replied_to(clone)
    db.session.commit()
    many, html = queries()
    assert many == few and html.count("Requester replied") == 10


def test_free_text_in_the_queue_is_escaped(client, analyst, login_as, pas_patients):
    login_as("requester")
    post_form(client, "/requests/new/import", {**valid_import(), "institution_name": "<script>alert(1)</script>"})
    _user, browser = analyst
    html = post_form(browser, "/desk", {"tab_choice": "all"}).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_advance_moves_only_where_the_workflow_allows(requests_made):
    from app.workflow.machine import advance

    req = _req(requests_made[1][0])
    assert not advance(req, S.DELIVERED, actor_id=None, actor="test")  # New cannot become Delivered: left alone
    assert req.status == S.NEW
    assert advance(req, S.ACCEPTED, actor_id=None, actor="test")
    assert not advance(req, S.ACCEPTED, actor_id=None, actor="test")  # already there
    db.session.commit()
    assert _req(req.call_ref).status == S.ACCEPTED
