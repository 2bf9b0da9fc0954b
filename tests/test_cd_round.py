"""The CD round (Appendix 5; issue 12.5): Awaiting Drop-off -> Collected -> Uploaded, the
collection page a barcode scanner types into, and the collection chart (page and PDF)."""

from __future__ import annotations

import io
import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa
from pypdf import PdfReader

from app.audit import AuditEvent
from app.cds.chart import default_collection_date
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import CD_ONLY, Status
from app.timeutil import local_today
from app.workflow.machine import TransitionRefused, transition
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_cd, valid_import

S = Status
PATEL = {"s_number": "S7654321", "nhs_number": "9990000026", "family_name": "Patel", "given_name": "Ravi",
         "dob": "1975-11-02"}


def _submit(client, url: str, data: dict[str, str]) -> str:
    response = post_form(client, url, data)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return re.search(r"(IEP-\d{4}-\d{6})", response.headers["Location"]).group(1)


def _req(call_ref: str) -> Request:
    db.session.expire_all()
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


@pytest.fixture
def round_made(app, client, login_as, pas_patients):
    """A requester's CD imports (two at the LRI, one at GH) and an import."""
    login_as("requester")
    refs = {
        "lri": _submit(client, "/requests/new/cd", valid_cd()),
        "lri2": _submit(client, "/requests/new/cd", {**valid_cd(), **PATEL, "cd_count": "1"}),
        "gh": _submit(client, "/requests/new/cd", {**valid_cd(), **PATEL, "drop_off_site": "GH", "cd_count": "3",
                                                     "exams-0-description": "CT head (Spire)"}),
        "import": _submit(client, "/requests/new/import", valid_import()),
    }
    return refs


@pytest.fixture
def desk(app, make_user):
    user = make_user("analyst")
    browser = app.test_client()
    post_form(browser, "/login", {"email": user.email, "password": "correct-horse-9"})
    return user, browser


def _scan(browser, code: str, site: str = "LRI", htmx: bool = False):
    headers = {"HX-Request": "true"} if htmx else {}
    return browser.post("/desk/cds/collect", data={"csrf_token": csrf_token(browser, "/desk/cds/collect"),
                                                   "code": code, "site": site}, headers=headers)


def _field_value(html: str) -> str:
    return re.search(r'<input id="code" name="code" type="text" value="([^"]*)"', html).group(1)


# -- statuses and the machine -------------------------------------------------------------

def test_a_cd_request_starts_awaiting_drop_off_and_an_import_at_new(round_made):
    assert _req(round_made["lri"]).status == S.AWAITING_DROP_OFF
    assert _req(round_made["import"]).status == S.NEW


@pytest.mark.parametrize(("path", "ok"), [
    ((S.COLLECTED, S.UPLOADED, S.DOWNLOAD_REQUEST), True),
    ((S.UPLOADED, S.DELIVERED), True),
    ((S.AWAITING_DETAILS, S.AWAITING_DROP_OFF, S.COLLECTED), True),
    ((S.COLLECTED, S.AWAITING_DETAILS, S.COLLECTED, S.UPLOADED, S.FAILED), True),
    ((S.CANCELLED,), True),
    ((S.ACCEPTED,), False),  # the desk checks a CD's details; it is accepted by its upload
    ((S.DELIVERED,), False),
    ((S.COLLECTED, S.AWAITING_DROP_OFF), False),
    ((S.COLLECTED, S.DECLINED), False),
    ((S.UPLOADED, S.COLLECTED), False),
], ids=lambda p: "->".join(s.value for s in p) if isinstance(p, tuple) else str(p))
def test_cd_round_transitions_allowed_and_refused(round_made, path, ok):
    req = _req(round_made["lri"])
    *steps, last = path
    for step in steps:  # Awaiting Details says what is missing (issue 13.7)
        transition(req, step, actor_id=None, actor="test", note="which scan?" if step == S.AWAITING_DETAILS else "")
    if ok:
        transition(req, last, actor_id=None, actor="test")
        db.session.commit()
        assert _req(round_made["lri"]).status == last
    else:
        with pytest.raises(TransitionRefused, match=f"cannot become {last.value}"):
            transition(req, last, actor_id=None, actor="test")


@pytest.mark.parametrize("wanted", sorted(CD_ONLY), ids=lambda s: s.value)
def test_cd_only_statuses_are_refused_for_an_import_with_the_reason(round_made, wanted):
    req = _req(round_made["import"])
    transition(req, S.AWAITING_DETAILS, actor_id=None, actor="test", note="which scan?")
    with pytest.raises(TransitionRefused) as refused:
        transition(req, wanted, actor_id=None, actor="test")
    assert f"Only a CD import can be {wanted.value}" in str(refused.value)
    assert "an import request" in str(refused.value)
    assert req.status == S.AWAITING_DETAILS


def test_the_desk_editor_offers_the_cd_round_to_a_cd_only(round_made, desk):
    _user, browser = desk
    transition(_req(round_made["import"]), S.AWAITING_DETAILS, actor_id=None, actor="test", note="which scan?")
    db.session.commit()
    cd = browser.get(f"/desk/requests/{round_made['lri']}/edit", headers={"HX-Request": "true"}).get_data(as_text=True)
    imp = browser.get(f"/desk/requests/{round_made['import']}/edit",
                      headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'value="Collected"' in cd and 'value="Accepted"' not in cd
    assert 'value="Awaiting Drop-off"' not in imp and 'value="Accepted"' in imp


def test_open_cd_requests_show_in_the_desk_queue(round_made, desk):
    _user, browser = desk
    page = browser.get("/desk").get_data(as_text=True)
    assert round_made["lri"] in page and "Awaiting Drop-off" in page
    tab = post_form(browser, "/desk", {"tab_choice": "cds"}, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert all(round_made[k] in tab for k in ("lri", "lri2", "gh")) and round_made["import"] not in tab


# -- the collection page ------------------------------------------------------------------

def test_collect_by_typed_reference_in_any_case_with_spaces(round_made, desk):
    user, browser = desk
    response = _scan(browser, "  " + round_made["lri"].lower() + " ")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"{round_made['lri']} collected" in html and _field_value(html) == ""
    assert 'id="code"' in html and "autofocus" in html
    assert f'id="collected-{round_made["lri"]}"' in html
    req = _req(round_made["lri"])
    assert req.status == S.COLLECTED
    events = db.session.execute(sa.select(AuditEvent.action, AuditEvent.user_id, AuditEvent.detail)
                                .where(AuditEvent.request_id == req.id).order_by(AuditEvent.id)).all()
    assert ("status_change", user.id, f"{req.call_ref} Awaiting Drop-off -> Collected") in events
    assert ("cd_collected", user.id, f"{req.call_ref} collected from LRI") in events


def test_collect_by_scanner_with_its_trailing_enter_htmx(round_made, desk):
    _user, browser = desk
    response = _scan(browser, round_made["gh"] + "\r\n", site="GH", htmx=True)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in html and 'id="cd-collect"' in html
    assert _req(round_made["gh"]).status == S.COLLECTED
    assert "collect-warning" not in html
    # The site is remembered for the next scan.
    page = browser.get("/desk/cds/collect").get_data(as_text=True)
    assert re.search(r'<option selected value="GH">|<option value="GH" selected>', page)


def test_a_cd_from_another_site_is_collected_with_a_warning(round_made, desk):
    _user, browser = desk
    html = _scan(browser, round_made["gh"], site="LRI").get_data(as_text=True)
    assert _req(round_made["gh"]).status == S.COLLECTED
    assert "was to be dropped off at GH, not LRI" in html


@pytest.mark.parametrize(("case", "message"), [
    ("unknown", "No request has the call reference IEP-2020-999999"),
    ("garbage", "No request has the call reference"),
    ("import", "is not a CD import"),
    ("collected", "was already collected on"),
    ("uploaded", "is already uploaded (on"),
    ("cancelled", "is Cancelled: a CD import can be marked collected only"),
])
def test_each_refusal_says_why_and_keeps_what_was_typed(round_made, desk, case, message):
    user, browser = desk
    typed = {
        "unknown": "IEP-2020-999999", "garbage": "hello <b>x</b>", "import": round_made["import"],
        "collected": round_made["lri"], "uploaded": round_made["lri"], "cancelled": round_made["lri"],
    }[case]
    if case == "collected":
        assert _scan(browser, round_made["lri"]).status_code == 200
    elif case == "uploaded":
        assert _scan(browser, round_made["lri"]).status_code == 200
        transition(_req(round_made["lri"]), S.UPLOADED, actor_id=user.id)
        db.session.commit()
    elif case == "cancelled":
        transition(_req(round_made["lri"]), S.CANCELLED, actor_id=None, actor="test")
        db.session.commit()
    before = _req(round_made["lri"]).status
    response = _scan(browser, typed + "\n")
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert message in html
    if case in ("collected", "uploaded"):
        assert f"by {user.name}" in html
    assert _field_value(html) == (typed if case != "garbage" else "hello &lt;b&gt;x&lt;/b&gt;")
    assert _req(round_made["lri"]).status == before


def test_requester_gets_403_on_the_collection_and_chart_pages(client, login_as, round_made):
    for url in ("/desk/cds/collect", "/desk/cds/chart", "/desk/cds/chart.pdf"):
        assert client.get(url).status_code == 403
    assert client.post("/desk/cds/collect", data={"code": round_made["lri"]}).status_code in (400, 403)
    assert _req(round_made["lri"]).status == S.AWAITING_DROP_OFF


# -- the chart ----------------------------------------------------------------------------

def test_default_chart_day_is_today_on_a_collection_day_else_the_next():
    assert default_collection_date(date(2026, 12, 9)) == date(2026, 12, 9)  # a Wednesday
    assert default_collection_date(date(2026, 12, 10)) == date(2026, 12, 16)
    assert default_collection_date(date(2024, 12, 24)) == date(2024, 12, 27)  # Christmas Day is a Wednesday


def _chart_rows(html: str, site: str) -> list[str]:
    section = re.search(rf'<section class="chart-site" id="chart-{site}">(.*?)</section>', html, re.S).group(1)
    return re.findall(r'id="chart-row-(IEP-\d{4}-\d{6})"', section)


def test_chart_lists_the_right_requests_per_site_and_day(round_made, desk):
    _user, browser = desk
    _scan(browser, round_made["lri2"])  # collected today: on today's chart, not on a later one
    html = browser.get("/desk/cds/chart").get_data(as_text=True)
    assert _chart_rows(html, "LRI") == [round_made["lri"]]
    assert _chart_rows(html, "GH") == [round_made["gh"]]
    assert _chart_rows(html, "LGH") == [] and "No CD requests are waiting" in html
    assert "SMITH, Margaret" in html and "S1234567" in html and round_made["import"] not in html
    today = browser.get(f"/desk/cds/chart?site=LRI&date={local_today().isoformat()}").get_data(as_text=True)
    assert _chart_rows(today, "LRI") == [round_made["lri"], round_made["lri2"]] and 'id="chart-GH"' not in today
    earlier = browser.get(f"/desk/cds/chart?site=lri&date={(local_today() - timedelta(days=3)).isoformat()}")
    assert _chart_rows(earlier.get_data(as_text=True), "LRI") == []  # not submitted yet then
    odd = browser.get("/desk/cds/chart?site=XYZ&date=soon").get_data(as_text=True)
    assert "There is no drop-off site" in odd and "was not a date" in odd and 'id="chart-LGH"' in odd


def test_chart_pdf_holds_the_call_references_one_page_per_site_and_is_audited(round_made, desk):
    user, browser = desk
    response = browser.get("/desk/cds/chart.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert "SMITH" not in response.headers["Content-Disposition"]
    reader = PdfReader(io.BytesIO(response.data))
    pages = [p.extract_text() for p in reader.pages]
    assert len(pages) == 3
    assert round_made["lri"] in pages[0] and round_made["lri2"] in pages[0] and "LRI" in pages[0]
    assert round_made["gh"] in pages[1] and round_made["lri"] not in pages[1]
    assert "No CD requests are waiting" in pages[2]
    assert "Number of" in pages[0] and "Signature" in pages[0]
    rows = db.session.execute(sa.select(AuditEvent.action, AuditEvent.user_id, AuditEvent.request_id)
                              .where(AuditEvent.action == "download_pdf")).all()
    ids = {_req(round_made[k]).id for k in ("lri", "lri2", "gh")}
    assert {r.request_id for r in rows} == ids and {r.user_id for r in rows} == {user.id}
    one = PdfReader(io.BytesIO(browser.get("/desk/cds/chart.pdf?site=GH").data))
    assert len(one.pages) == 1 and round_made["gh"] in one.pages[0].extract_text()


def test_chart_page_views_are_audited(round_made, desk):
    user, browser = desk
    browser.get("/desk/cds/chart?site=GH")
    rows = db.session.execute(sa.select(AuditEvent.action, AuditEvent.request_id, AuditEvent.detail)
                              .where(AuditEvent.user_id == user.id, AuditEvent.action.in_(["view", "list_view"]))
                              ).all()
    gh = _req(round_made["gh"])
    assert any(r.action == "view" and r.request_id == gh.id for r in rows)
    assert any(r.action == "list_view" and 'site="GH"' in r.detail for r in rows)


def test_desk_navigation_links_to_collection_and_chart(desk, client, login_as):
    _user, browser = desk
    page = browser.get("/desk").get_data(as_text=True)
    assert 'href="/desk/cds/collect"' in page and 'href="/desk/cds/chart"' in page
    login_as("requester")
    assert 'href="/desk/cds/collect"' not in client.get("/requests").get_data(as_text=True)
