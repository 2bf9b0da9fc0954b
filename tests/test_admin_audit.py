"""The audit viewer (issue 14.5; guideline 2.7 a): each filter, "who has looked at this
patient" against rows written here, the CSV and its formula guard, the viewing audited,
admins only, bad filters refused with what was typed kept, and patient identifiers kept
out of every URL."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from app import audit
from app.admin import auditview
from app.audit import Action, AuditEvent
from app.extensions import db
from app.patients.models import Patient
from app.requests.models import Request
from app.requests.statuses import Kind
from tests.conftest import csrf_token, post_form

A1, A2, B1 = "IEP-2026-000001", "IEP-2026-000002", "IEP-2026-000003"


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


@dataclass
class Trail:
    people: dict[str, object]  # alice, bob, carol, dave -> User
    ids: dict[str, int]  # event name -> AuditEvent.id
    patient_ids: tuple[int, int]

    def names(self, html: str) -> set[str]:
        """The fixture's events the page lists (the admin's own rows left out)."""
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[int(i)] for i in re.findall(r'<tr id="event-(\d+)"', html) if int(i) in by_id}


def _request(call_ref: str, kind: Kind, requester_id: int, patient, nhs: str) -> Request:  # noqa: ANN001
    req = Request(call_ref=call_ref, kind=kind, requester_id=requester_id, patient_id=patient.id,
                  s_number=patient.s_number, nhs_number=nhs, family_name=patient.family_name,
                  given_name=patient.given_name, dob=patient.dob, contact_name="Dr Shah")
    db.session.add(req)
    db.session.flush()
    return req


@pytest.fixture
def trail(app, make_user, pas_patients) -> Trail:
    """Four people, three requests (two of SMITH S1234567, one of PATEL) and the rows they left."""
    people = {}
    for key, role, name in (("alice", "analyst", "Alice Archer"), ("bob", "requester", "Bob Baker"),
                            ("carol", "am_radiology", "Carol Clark"), ("dave", "radiologist", "Dave Dunn")):
        user = make_user(role, email=f"{key}@test.uhl")
        user.name = name
        people[key] = user
    smith, patel = pas_patients[0], pas_patients[1]
    a1 = _request(A1, Kind.IMPORT, people["bob"].id, smith, "9990000018")
    a2 = _request(A2, Kind.EXPORT, people["bob"].id, smith, "")  # found by the register row only
    b1 = _request(B1, Kind.IMPORT, people["bob"].id, patel, "9990000026")
    rows = {
        "failed_alice": (Action.SIGN_IN_FAILED, None, "alice@test.uhl", None, "", at(3, 1, 8)),
        "lookup_bob": (Action.SEARCH, "bob", "", None,
                       f'PAS register look-up: s_number="S1234567" found patient record {smith.id}', at(3, 9, 10)),
        "view_alice_a1": (Action.VIEW, "alice", "", a1, f"{A1} desk editor", at(3, 10, 9)),
        "view_bob_b1": (Action.VIEW, "bob", "", b1, B1, at(3, 11, 9)),
        "edit_carol_a2": (Action.EDIT, "carol", "", a2, f"{A2} note", at(3, 12, 9)),
        "search_alice_nhs": (Action.SEARCH, "alice", "", None, 'desk queue: nhs_number="999 000 0018" tab="all"',
                             at(3, 13, 9)),
        "trauma_dave": (Action.VIEW, "dave", "", None, f"trauma screen: patient record {smith.id} shown",
                        at(3, 14, 9)),
        "name_search_carol": (Action.SEARCH, "carol", "", None, 'desk queue: patient_name="Smith"', at(3, 15, 9)),
        "other_record_carol": (Action.VIEW, "carol", "", None, f"trauma screen: patient record {smith.id}0 shown",
                               at(3, 15, 10)),
        "transfer_system": (Action.TRANSFER, None, audit.SYSTEM_TRANSFER_ENGINE, a1, f"{A1} transfer 1 done",
                            at(3, 16, 9)),
        "mine_bob_lower": (Action.SEARCH, "bob", "", None, 'my requests: q="s1234567" page=1 shown=1', at(3, 17, 9)),
        "early_alice": (Action.LIST_VIEW, "alice", "", None, 'desk queue: tab="all"', at(3, 29, 0, 30)),
        # 23:30 UTC on 29 March is 00:30 BST on the 30th (the clocks went forward that morning)
        "late_alice": (Action.LIST_VIEW, "alice", "", None, 'desk queue: tab="all"', at(3, 29, 23, 30)),
    }
    events = {}
    for name, (action, who, actor, req, detail, moment) in rows.items():
        user = people[who] if who else None
        events[name] = AuditEvent(action=str(action), user_id=user.id if user else None,
                                  actor=actor or (user.email if user else ""), request_id=req.id if req else None,
                                  detail=detail, remote_addr="10.0.0.9", at=moment)
    db.session.add_all(events.values())
    db.session.commit()
    return Trail(people=people, ids={name: e.id for name, e in events.items()},
                 patient_ids=(smith.id, patel.id))


@pytest.fixture
def admin(client, login_as):
    return login_as("admin")


SMITH_ROWS = {"lookup_bob", "view_alice_a1", "edit_carol_a2", "search_alice_nhs", "trauma_dave",
              "transfer_system", "mine_bob_lower"}


# --- Each filter, and the combination --------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    pytest.param({"user": "alice"}, {"failed_alice", "view_alice_a1", "search_alice_nhs", "early_alice",
                                     "late_alice"}, id="user_by_name_includes_failed_sign_ins_with_their_address"),
    pytest.param({"user": "CAROL@test"}, {"edit_carol_a2", "name_search_carol", "other_record_carol"},
                 id="user_by_part_of_the_e_mail_any_case"),
    pytest.param({"user": audit.SYSTEM_TRANSFER_ENGINE}, {"transfer_system"}, id="user_a_system_name_typed_whole"),
    pytest.param({"user": "%"}, set(), id="user_percent_is_literal"),
    pytest.param({"call_ref": B1}, {"view_bob_b1"}, id="call_ref"),
    pytest.param({"call_ref": A1.lower()}, {"view_alice_a1", "transfer_system"}, id="call_ref_any_case"),
    pytest.param({"action": "search"}, {"lookup_bob", "search_alice_nhs", "name_search_carol", "mine_bob_lower"},
                 id="action"),
    pytest.param({"date_from": "30/03/2026", "date_to": "30/03/2026"}, {"late_alice"},
                 id="a_london_day_after_the_clocks_change"),
    pytest.param({"date_from": "2026-03-29", "date_to": "2026-03-29"}, {"early_alice"}, id="a_london_day_iso"),
    pytest.param({"date_to": "01/03/2026"}, {"failed_alice"}, id="to_date_includes_its_day"),
    pytest.param({"date_from": "15/03/2026", "date_to": "16/03/2026", "user": "carol"},
                 {"name_search_carol", "other_record_carol"}, id="dates_and_user"),
    pytest.param({"user": "alice", "action": "search"}, {"search_alice_nhs"}, id="user_and_action"),
])
def test_each_filter_in_the_url(client, admin, trail, query, expected):
    page = client.get("/admin/audit", query_string=query)
    assert page.status_code == 200
    assert trail.names(page.get_data(as_text=True)) == expected


@pytest.mark.parametrize("typed", ["S1234567", "s123 4567", "9990000018", "999 000 0018", "999-000-0018"])
def test_the_patient_filter_finds_their_requests_and_the_searches_naming_them(client, admin, trail, typed):
    page = post_form(client, "/admin/audit", {"patient": typed})
    assert page.status_code == 200  # answered, not redirected: the number stays out of the URL
    html = page.get_data(as_text=True)
    assert trail.names(html) == SMITH_ROWS
    assert f'value="{typed}"' in html


def test_the_patient_filter_combines_with_the_others(client, admin, trail):
    page = post_form(client, "/admin/audit", {"patient": "S1234567", "user": "alice", "action": "view"})
    assert trail.names(page.get_data(as_text=True)) == {"view_alice_a1"}
    page = post_form(client, "/admin/audit", {"patient": "9990000026", "date_from": "11/03/2026",
                                              "date_to": "11/03/2026"})
    assert trail.names(page.get_data(as_text=True)) == {"view_bob_b1"}


def test_no_filter_lists_everything_newest_first(client, admin, trail):
    html = client.get("/admin/audit").get_data(as_text=True)
    order = [int(i) for i in re.findall(r'<tr id="event-(\d+)"', html)]
    fixture = [i for i in order if i in trail.ids.values()]
    assert fixture == [trail.ids[n] for n in ("late_alice", "early_alice", "mine_bob_lower", "transfer_system",
                                              "other_record_carol", "name_search_carol", "trauma_dave",
                                              "search_alice_nhs", "edit_carol_a2", "view_bob_b1", "view_alice_a1",
                                              "lookup_bob", "failed_alice")]
    assert "29/03/2026 00:30:00" in html and "30/03/2026 00:30:00" in html  # London time, seconds shown


def test_an_empty_result_says_so(client, admin, trail):
    html = client.get("/admin/audit", query_string={"call_ref": "IEP-2026-999999"}).get_data(as_text=True)
    assert "No audit events match these filters." in html and "<table" not in html


# --- Pages, and patient identifiers out of URLs ------------------------------------------------

def test_pages_by_keyset_in_the_url(client, admin, trail, monkeypatch):
    monkeypatch.setattr(auditview, "PAGE_SIZE", 2)
    first = client.get("/admin/audit", query_string={"user": "alice"}).get_data(as_text=True)
    assert trail.names(first) == {"late_alice", "early_alice"}
    older = re.search(r'href="(/admin/audit\?[^"]*after=[^"]+)">Older', first).group(1).replace("&amp;", "&")
    assert "user=alice" in older
    second = client.get(older).get_data(as_text=True)
    assert trail.names(second) == {"search_alice_nhs", "view_alice_a1"}
    third = client.get(re.search(r'href="([^"]+)">Older', second).group(1).replace("&amp;", "&"))
    assert trail.names(third.get_data(as_text=True)) == {"failed_alice"}
    assert ">Older<" not in third.get_data(as_text=True)


def test_a_patient_filter_pages_by_post_and_never_puts_the_number_in_a_url(client, admin, trail, monkeypatch):
    monkeypatch.setattr(auditview, "PAGE_SIZE", 4)
    page = post_form(client, "/admin/audit", {"patient": "S1234567"})
    html = page.get_data(as_text=True)
    assert trail.names(html) == {"mine_bob_lower", "transfer_system", "trauma_dave", "search_alice_nhs"}
    assert not re.search(r'(href|action|formaction)="[^"]*S1234567', html)
    after = re.search(r'name="after" value="([^"]+)"', html).group(1)
    second = post_form(client, "/admin/audit", {"patient": "S1234567", "after": after})
    assert second.status_code == 200
    assert trail.names(second.get_data(as_text=True)) == {"edit_carol_a2", "view_alice_a1", "lookup_bob"}


def test_a_post_without_a_patient_redirects_to_its_url(client, admin, trail):
    answer = post_form(client, "/admin/audit", {"call_ref": B1, "action": "view", "date_from": "01/03/2026"})
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"/admin/audit?call_ref={B1}&action=view&date_from=2026-03-01"


def test_a_patient_in_the_query_string_is_ignored(client, admin, trail):
    html = client.get("/admin/audit", query_string={"patient": "S1234567", "call_ref": B1}).get_data(as_text=True)
    assert trail.names(html) == {"view_bob_b1"}
    assert 'value="S1234567"' not in html


@pytest.mark.parametrize("after", ["abc", "1.2.3", "-5.1", "99999999999999999999.1", "1.99999999999999999999",
                                   "１２.3", "0.0", ""])
def test_a_crafted_page_cursor_gives_the_first_page(client, admin, trail, after):
    page = client.get("/admin/audit", query_string={"user": "alice", "after": after})
    assert page.status_code == 200
    assert "late_alice" in trail.names(page.get_data(as_text=True))


# --- Who has looked at this patient ------------------------------------------------------------

def _lookers(html: str) -> list[tuple[str, ...]]:
    body = re.search(r"<tbody>(.*?)</tbody>", html, re.S)
    if body is None:
        return []
    rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    return [tuple(re.sub(r"<[^>]+>", " ", cell).split("  ")[0].strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                                                row, re.S))
            for row in rows]


def test_who_has_looked_counts_each_person_from_the_rows(client, admin, trail):
    page = post_form(client, "/admin/audit/patient", {"patient": "S1234567"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    # Latest first; the system's transfer is no person; the search by name alone and
    # "patient record <id>0" are not this patient.
    assert _lookers(html) == [
        ("Bob Baker", "Requester", "09/03/2026 10:00", "17/03/2026 09:00", "2"),
        ("Dave Dunn", "Radiologist (on call)", "14/03/2026 09:00", "14/03/2026 09:00", "1"),
        ("Alice Archer", "Service desk analyst", "10/03/2026 09:00", "13/03/2026 09:00", "2"),
        ("Carol Clark", "AM radiology", "12/03/2026 09:00", "12/03/2026 09:00", "1"),
    ]
    assert "bob@test.uhl" in html
    # The NHS number finds the same people; the admin's own look a moment ago now counts too.
    again = post_form(client, "/admin/audit/patient", {"patient": "999 000 0018"}).get_data(as_text=True)
    people = [row[0] for row in _lookers(again)]
    assert people[0] == admin.name and people[1:] == ["Bob Baker", "Dave Dunn", "Alice Archer", "Carol Clark"]
    assert _lookers(again)[0][-1] == "1"


def test_who_has_looked_at_a_patient_no_one_has(client, admin, trail):
    html = post_form(client, "/admin/audit/patient", {"patient": "S0000003"}).get_data(as_text=True)
    assert "No one has looked at S0000003" in html


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def before(conn, cursor, statement, *args):  # noqa: ANN001
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def test_who_has_looked_is_one_query_however_many_people_and_requests(client, admin, trail, make_user):
    token = csrf_token(client, "/admin/audit/patient")

    def look() -> tuple[int, int]:
        with statements() as seen:
            page = client.post("/admin/audit/patient", data={"csrf_token": token, "patient": "S1234567"})
        assert page.status_code == 200
        reads = [s for s in seen if s.lstrip().upper().startswith("SELECT") and "audit_events" in s]
        return len(reads), len(seen)

    reads, few = look()
    assert reads == 1
    smith = db.session.get_one(Patient, trail.patient_ids[0])
    for i in range(6):
        person = make_user("analyst")
        req = _request(f"IEP-2026-1000{i:02d}", Kind.IMPORT, trail.people["bob"].id, smith, "")
        db.session.add(AuditEvent(action="view", user_id=person.id, actor=person.email, request_id=req.id,
                                  at=at(4, 1, 9)))
    db.session.commit()
    reads, many = look()
    assert reads == 1 and many == few
    html = post_form(client, "/admin/audit/patient", {"patient": "S1234567"}).get_data(as_text=True)
    assert len(_lookers(html)) == 4 + 6 + 1  # the admin's looks at the patient count too


# --- CSV -----------------------------------------------------------------------------------------

def _csv(answer) -> list[list[str]]:  # noqa: ANN001
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="audit-')
    return list(csv.reader(io.StringIO(answer.get_data(as_text=True))))


def test_the_csv_holds_the_filtered_rows_with_a_header(client, admin, trail):
    answer = post_form(client, "/admin/audit.csv", {"call_ref": A1})
    assert answer.is_streamed
    rows = _csv(answer)
    assert tuple(rows[0]) == auditview.CSV_HEADER
    assert [r[1] for r in rows[1:]] == [str(trail.ids["transfer_system"]), str(trail.ids["view_alice_a1"])]
    assert rows[2] == ["2026-03-10T09:00:00+00:00", str(trail.ids["view_alice_a1"]), str(trail.people["alice"].id),
                       "Alice Archer", "alice@test.uhl", "view", A1, f"{A1} desk editor", "10.0.0.9"]
    assert rows[1][2:4] == ["", ""] and rows[1][4] == audit.SYSTEM_TRANSFER_ENGINE
    patient = _csv(post_form(client, "/admin/audit.csv", {"patient": "S1234567"}))
    assert {r[1] for r in patient[1:]} == {str(trail.ids[n]) for n in SMITH_ROWS}


def test_the_csv_defuses_spreadsheet_formulas(client, admin, trail):
    bob = trail.people["bob"]
    for text in ("=HYPERLINK(\"http://x\")", "+1+2", "-1+2", "@SUM(A1)", "\t=1", "plain - text = fine"):
        db.session.add(AuditEvent(action="message", user_id=bob.id, actor=text, detail=text, at=at(5, 1, 9)))
    db.session.commit()
    rows = _csv(post_form(client, "/admin/audit.csv", {"action": "message"}))[1:]
    details = sorted(r[7] for r in rows)
    assert details == sorted(["'=HYPERLINK(\"http://x\")", "'+1+2", "'-1+2", "'@SUM(A1)", "'\t=1",
                              "plain - text = fine"])
    assert sorted(r[4] for r in rows) == details  # the actor column too


def test_bad_filters_on_the_csv_show_the_page_again(client, admin, trail):
    answer = post_form(client, "/admin/audit.csv", {"date_from": "32/01/2026"})
    assert answer.status_code == 422 and answer.mimetype == "text/html"
    assert 'value="32/01/2026"' in answer.get_data(as_text=True)


# --- Viewing is audited -------------------------------------------------------------------------

def _viewed(user_id: int) -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(AuditEvent.detail).where(
        AuditEvent.action == Action.AUDIT_VIEWED.value, AuditEvent.user_id == user_id).order_by(AuditEvent.id)))


def test_every_way_of_viewing_the_audit_is_audited_with_its_filters(client, admin, trail):
    client.get("/admin/audit", query_string={"call_ref": B1, "action": "view", "date_to": "31/03/2026"})
    post_form(client, "/admin/audit/patient", {"patient": "999 000 0018"})
    post_form(client, "/admin/audit.csv", {"patient": "S1234567", "user": "bob"})
    details = [d for d in _viewed(admin.id) if 'shown=' not in d or 'call_ref' in d]
    assert details[0] == (f'audit trail: call_ref="{B1}" action="view" date_to="2026-03-31" page="first" shown=1')
    assert 'who has looked at patient: nhs_number="9990000018" people=4' in details
    assert details[-1] == 'audit trail CSV: s_number="S1234567" user="bob"'


def test_a_refused_filter_is_not_audited_as_a_view(client, admin, trail):
    before = len(_viewed(admin.id))
    assert client.get("/admin/audit", query_string={"action": "drop"}).status_code == 422
    assert len(_viewed(admin.id)) == before


# --- Who may ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_an_admin_sees_the_audit(client, login_as, trail, role):
    login_as(role)
    assert client.get("/admin/audit").status_code == 403
    assert client.get("/admin/audit/patient").status_code == 403
    assert post_form(client, "/admin/audit/patient", {"patient": "S1234567"}).status_code == 403
    answer = post_form(client, "/admin/audit.csv", {})
    assert answer.status_code == 403 and answer.mimetype == "text/html"
    assert db.session.scalar(sa.select(sa.func.count()).where(AuditEvent.action == Action.AUDIT_VIEWED.value)) == 0


def test_the_admin_home_links_the_audit_trail(client, admin):
    html = client.get("/admin/").get_data(as_text=True)
    assert 'href="/admin/audit"' in html and "Audit trail" in html


# --- Bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "field", "message"), [
    ({"date_from": "31/02/2026"}, "date_from", "Enter a date as DD/MM/YYYY"),
    ({"date_to": "tomorrow"}, "date_to", "Enter a date as DD/MM/YYYY"),
    ({"action": "drop_tables"}, "action", "Choose an action from the list."),
    ({"date_from": "10/03/2026", "date_to": "01/03/2026"}, "date_to", "before the &#39;from&#39; date"),
    ({"user": "x" * 300}, "user", "Field cannot be longer than 254 characters."),
])
def test_bad_filters_in_the_url_are_refused_and_kept(client, admin, trail, query, field, message):
    page = client.get("/admin/audit", query_string=query)
    assert page.status_code == 422
    html = page.get_data(as_text=True)
    error = re.search(rf'<p class="field-error" id="{field}-error">(.*?)</p>', html, re.S)
    assert error and message in error.group(1)
    for name, value in query.items():
        if name != "action":
            assert f'value="{value}"' in html
    assert "<table" not in html  # no rows for filters that were not understood


@pytest.mark.parametrize(("typed", "message"), [
    ("S12", "An S number is the letter S followed by 7 digits"),
    ("Smith", "not a name"),
    ("9990000019", "check digit is wrong"),
    ("12345", "An NHS number has 10 digits"),
])
def test_a_bad_patient_is_refused_and_kept(client, admin, trail, typed, message):
    for url in ("/admin/audit", "/admin/audit/patient"):
        page = post_form(client, url, {"patient": typed})
        assert page.status_code == 422
        html = page.get_data(as_text=True)
        assert message in re.search(r'id="patient-error">(.*?)</p>', html, re.S).group(1)
        assert f'value="{typed}"' in html


def test_the_patient_view_needs_a_patient(client, admin):
    page = post_form(client, "/admin/audit/patient", {"patient": "  "})
    assert page.status_code == 422
    assert "Enter the patient&#39;s S number or NHS number." in page.get_data(as_text=True)


# --- The indexes --------------------------------------------------------------------------------

FILTERED: dict[str, Callable[[Trail], dict[str, str]]] = {
    "user": lambda t: {"user": "alice"},
    "call_ref": lambda t: {"call_ref": A1},
    "action": lambda t: {"action": "search"},
    "dates": lambda t: {"date_from": "01/03/2026", "date_to": "02/03/2026"},
    "patient": lambda t: {"patient": "S1234567"},
}


def _plan(sql: str, parameters) -> str:  # noqa: ANN001
    """The database's plan for a statement the view ran, with no table scan allowed where an
    index can serve (PostgreSQL; SQLite's planner prefers an index on its own)."""
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = conn.exec_driver_sql("EXPLAIN " + sql, parameters).all()
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters).all()
        conn.rollback()
    return "\n".join(str(r[-1]) for r in rows)


@pytest.mark.parametrize("name", FILTERED)
def test_each_filtered_page_reads_the_audit_through_an_index(client, admin, trail, name):
    data = FILTERED[name](trail)
    captured: list[tuple[str, object]] = []

    def before(conn, cursor, statement, parameters, *args):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "FROM audit_events" in statement:
            captured.append((statement, parameters))

    token = csrf_token(client, "/admin/audit")
    event.listen(db.engine, "before_cursor_execute", before)
    try:
        page = client.post("/admin/audit", data={"csrf_token": token, **data}, follow_redirects=True)
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    assert page.status_code == 200 and len(captured) == 1
    plan = _plan(*captured[0])
    if db.engine.dialect.name == "postgresql":
        assert "Seq Scan on audit_events" not in plan, plan
    else:
        scans = [line for line in plan.splitlines() if re.match(r"SCAN audit_events\b", line)]
        assert not scans, plan
    assert "ix_audit_events_" in plan, plan


def test_dates_are_london_days(app):
    assert auditview._utc_midnight(date(2026, 3, 30)) == datetime(2026, 3, 29, 23, tzinfo=UTC)
    assert auditview._utc_midnight(date(2026, 1, 5)) == datetime(2026, 1, 5, tzinfo=UTC)
