"""The queue's counts, the poll's change check and a page's statements (issue 15.4).

The queue was made fast at 100,000 requests by counting Action Required as four parts,
capping "All", reading a page's ids before its rows and answering the poll from one
statement of index look-ups (bench/desk.py). These tests hold that it still shows what it
showed: every tab's count is the number of rows the tab lists, whatever the mix of
statuses, priorities, replies and transfers; the poll notices every change the queue
shows; and a page costs the same statements whatever it holds.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from app.desk import queries
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import freeze, utcnow
from app.transfers.models import Transfer, TransferState
from app.workflow.models import Message, OutboxEmail, OutboxStatus
from tests.conftest import csrf_token, post_form
from tests.test_desk import analyst  # noqa: F401 - a fixture: a signed-in analyst and their browser

S = Status
HX = {"HX-Request": "true"}
CLOSED = (S.DELIVERED, S.COMPLETED, S.CANCELLED, S.DECLINED, S.PURGED)
NOT_STARTED = (S.NEW, S.AWAITING_DETAILS, S.ACCEPTED, S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED)
IN_PROGRESS = (S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.UPLOADING, S.ON_IEP)
TAB_LABELS = {"action": "Action Required", "accepted": "Accepted", "progress": "In Progress", "failed": "Failed",
              "cds": "CD round", "all": "All"}


@pytest.fixture
def people(app, make_user, pas_patients):
    """A requester and a desk analyst (who writes to them), and a registered patient."""
    from app.patients.models import Patient

    patient = db.session.scalar(sa.select(Patient).order_by(Patient.id))
    return make_user("requester"), make_user("analyst"), patient


def _make(people, n: int, *, status: Status, priority: Priority = Priority.STANDARD, kind: Kind = Kind.IMPORT,
          family: str = "SMITH", changed_hours_ago: int = 5) -> Request:
    requester, _desk, patient = people
    moment = utcnow() - timedelta(hours=changed_hours_ago)
    req = Request(call_ref=f"IEP-1999-{n:06d}", kind=kind, status=status, priority=priority,
                  requester_id=requester.id, patient_id=patient.id, s_number=patient.s_number,
                  family_name=family, given_name="Margaret", dob=date(1948, 3, 14), contact_name="Dr A",
                  created_at=moment - timedelta(minutes=n), status_changed_at=moment)
    db.session.add(req)
    db.session.flush()
    return req


def _message(req: Request, author_id: int | None, hours_after_change: float) -> None:
    db.session.add(Message(request_id=req.id, author_id=author_id, kind="message", body="…",
                           created_at=req.status_changed_at + timedelta(hours=hours_after_change)))


def _transfer(req: Request, **values: object) -> Transfer:
    transfer = Transfer(request_id=req.id, direction="pull", priority=req.priority.value,
                        study_uids=[f"1.2.3.{req.id}"], study_key=f"{req.id:040d}", **values)
    db.session.add(transfer)
    db.session.flush()
    return transfer


@pytest.fixture
def mix(people):
    """Every status at Standard and at Blue Light (the CD round's as CD imports), Awaiting
    Details with and without the requester's reply, and In Progress with a transfer that
    needs the analyst and one that does not. Returns what each tab must list, by the
    rules the desk's glossary gives, written here independently of the queries."""
    requester, desk, _patient = people
    made: list[tuple[Request, bool, bool]] = []  # (request, requester replied, transfer needs eyes)
    n = 0
    for status in Status:
        for priority in (Priority.STANDARD, Priority.BLUE_LIGHT):
            n += 1
            kind = Kind.CD if status in (S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED) else Kind.IMPORT
            made.append((_make(people, n, status=status, priority=priority, kind=kind), False, False))
    for priority in (Priority.STANDARD, Priority.BLUE_LIGHT):
        for reply_after in (2, -2):  # the requester wrote after the request went to Awaiting Details, or before
            n += 1
            req = _make(people, n, status=S.AWAITING_DETAILS, priority=priority)
            _message(req, desk.id, -3)
            _message(req, requester.id, reply_after)
            made.append((req, reply_after > 0, False))
    for eyes in ({"stalled": True, "state": TransferState.RUNNING}, {"state": TransferState.WAITING_CONFIRMATION},
                 {"state": TransferState.RUNNING, "instances_total": 10, "instances_done": 4}):
        n += 1
        req = _make(people, n, status=S.DOWNLOADING)
        _transfer(req, **eyes)
        made.append((req, False, eyes.get("stalled") is True or eyes["state"] == TransferState.WAITING_CONFIRMATION))
    db.session.commit()

    def in_tab(req: Request, replied: bool, eyes: bool) -> set[str]:
        tabs = {"all"}
        blue = req.priority == Priority.BLUE_LIGHT
        if (req.status in (S.NEW, S.FAILED, S.DECLINED, S.AWAITING_DROP_OFF, S.UPLOADED)
                or (req.status == S.AWAITING_DETAILS and replied) or (blue and req.status in NOT_STARTED)
                or (req.status in IN_PROGRESS and eyes)):
            tabs.add("action")
        tabs |= {tab for tab, statuses in (("accepted", (S.ACCEPTED,)), ("progress", IN_PROGRESS),
                                           ("failed", (S.FAILED,)), ("cds", (S.AWAITING_DROP_OFF, S.COLLECTED,
                                                                             S.UPLOADED)))
                 if req.status in statuses}
        return tabs

    return {tab: {req.call_ref for req, replied, eyes in made if tab in in_tab(req, replied, eyes)}
            for tab in TAB_LABELS}, {req.call_ref: req.status for req, _r, _e in made}


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr id="row-(IEP-\d{4}-\d{6})"', html)


def _counts(html: str) -> dict[str, str]:
    return {label: count for label, count in re.findall(r'class="tab[^"]*"[^>]*>([^<]+?) <span class="count">'
                                                        r'\(([^)]+)\)</span>', html)}


def _tab(browser, tab: str, **filters: str) -> str:
    return post_form(browser, "/desk", {"tab_choice": tab, **filters}, headers=HX).get_data(as_text=True)


def test_every_tab_lists_the_rows_the_rules_give_and_counts_them(analyst, mix):
    _user, browser = analyst
    expected, _statuses = mix
    for tab, label in TAB_LABELS.items():
        html = _tab(browser, tab)
        assert set(_rows(html)) == expected[tab], tab
        assert len(_rows(html)) == len(expected[tab]), f"{tab}: a row listed twice"
        assert _counts(html) == {TAB_LABELS[t]: str(len(expected[t])) for t in TAB_LABELS}, tab
        assert f"{label}: {len(expected[tab])} requests." in html


@pytest.mark.parametrize("status", list(Status), ids=[s.name for s in Status])
def test_counts_under_a_status_filter_are_the_rows_listed(analyst, mix, status):
    """The counts skip the tabs a status filter excludes: each is still what the tab lists."""
    _user, browser = analyst
    expected, statuses = mix
    html = _tab(browser, "all", status=status.value)
    wanted = {ref for ref, s in statuses.items() if s == status}
    assert set(_rows(html)) == wanted
    assert _counts(html) == {TAB_LABELS[t]: str(len(expected[t] & wanted)) for t in TAB_LABELS}
    for tab in ("action", "accepted", "progress", "failed", "cds"):
        assert set(_rows(_tab(browser, tab, status=status.value))) == expected[tab] & wanted, tab


def test_counts_under_a_kind_and_a_name_filter_are_the_rows_listed(analyst, mix, people):
    _user, browser = analyst
    expected, statuses = mix
    jones = {_make(people, 900 + i, status=s, family="Jones").call_ref for i, s in enumerate((S.NEW, S.ACCEPTED))}
    db.session.commit()
    html = _tab(browser, "all", kind="cd")
    cds = {ref for ref in statuses if ref in set(_rows(html))}
    assert cds and all(statuses[ref] in (S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED) for ref in cds)
    assert _counts(html)["CD round"] == str(len(expected["cds"]))
    named = _tab(browser, "all", patient_name="jon")
    assert set(_rows(named)) == jones
    assert _counts(named) == {"Action Required": "1", "Accepted": "1", "In Progress": "0", "Failed": "0",
                              "CD round": "0", "All": "2"}


@pytest.mark.parametrize("one_pass", [True, False], ids=["one pass", "per tab"])
def test_a_name_search_counts_every_tab_in_one_pass_or_per_tab_alike(analyst, mix, monkeypatch, one_pass):
    """Every request of the mix is a SMITH: the search finds them all, counted in one pass
    over them, or per tab when the search finds more than the pass takes."""
    _user, browser = analyst
    expected, _statuses = mix
    if not one_pass:
        monkeypatch.setattr(queries, "SEARCH_PASS_LIMIT", 1)
    for tab in TAB_LABELS:
        html = _tab(browser, tab, patient_name="smi")
        assert set(_rows(html)) == expected[tab], tab
        assert _counts(html) == {TAB_LABELS[t]: str(len(expected[t])) for t in TAB_LABELS}, tab


def test_all_says_how_many_up_to_the_cap_then_more_than_it(analyst, mix, monkeypatch):
    """Past ALL_COUNT_CAP the All tab says "N+" (there are more), never a wrong number."""
    _user, browser = analyst
    expected, _statuses = mix
    total = len(expected["all"])
    monkeypatch.setattr(queries, "ALL_COUNT_CAP", total)
    html = _tab(browser, "all")
    assert _counts(html)["All"] == str(total) and f"All: {total} requests." in html  # exactly the cap: exact
    monkeypatch.setattr(queries, "ALL_COUNT_CAP", total - 1)
    html = _tab(browser, "all")
    assert _counts(html)["All"] == f"{total - 1:,}+" and f"All: {total - 1:,}+ requests." in html
    assert _counts(html)["Action Required"] == str(len(expected["action"]))  # the working tabs stay exact
    assert _counts(_tab(browser, "all", status="Failed"))["All"] == "2"  # a filter under the cap: exact
    monkeypatch.setattr(queries, "ALL_COUNT_CAP", 1)  # under the working tabs' counts: they stay exact
    html = _tab(browser, "action")
    assert _counts(html) == {**{TAB_LABELS[t]: str(len(expected[t])) for t in TAB_LABELS}, "All": "1+"}
    assert f"Action Required: {len(expected['action'])} requests." in html


def test_family_name_search_matches_prefixes_only(analyst, people):
    """The name search reads a range of the upper-cased name on SQLite: the same rows as
    the prefix match it stands beside, including names with quotes, spaces and accents."""
    _user, browser = analyst
    names = ["Smith", "SMITHSON", "Smyth", "O'Brien", "Obrien", "de la Cruz", "Delacroix", "Ölund", "Olund", "Ng_Lee",
             "Nga", "Ng"]
    refs = {name: _make(people, 800 + i, status=S.NEW, family=name).call_ref for i, name in enumerate(names)}
    db.session.commit()
    for typed, found in [("smith", ["Smith", "SMITHSON"]), ("o'b", ["O'Brien"]), ("OB", ["Obrien"]),
                         ("de la", ["de la Cruz"]), ("ÖL", ["Ölund"]), ("ng_", ["Ng_Lee"]),
                         ("NG", ["Ng_Lee", "Nga", "Ng"]),
                         ("zz", []), ("%", []), ("s%h", [])]:
        html = _tab(browser, "all", patient_name=typed)
        assert sorted(_rows(html)) == sorted(refs[name] for name in found), typed


def test_each_row_shows_its_latest_transfer_once(app, analyst, people):
    """A request with several transfers is one row, with the bar of its latest (a retry
    after a failure shows the retry's progress, not the failure's); a finished latest
    transfer shows no bar, whatever came before; the editor's row shows the same."""
    _user, browser = analyst
    retried = _make(people, 1, status=S.DOWNLOADING)
    _transfer(retried, state=TransferState.FAILED, instances_total=10, instances_done=5, last_error="refused")
    _transfer(retried, state=TransferState.RUNNING, instances_total=8, instances_done=2)
    delivered = _make(people, 2, status=S.ON_IEP)
    _transfer(delivered, state=TransferState.FAILED, instances_total=6, instances_done=1)
    _transfer(delivered, state=TransferState.DELIVERED, instances_total=6, instances_done=6)
    failed = _make(people, 3, status=S.FAILED)
    _transfer(failed, state=TransferState.DELIVERED, instances_total=4, instances_done=4)
    _transfer(failed, state=TransferState.FAILED, instances_total=4, instances_done=3)
    db.session.commit()
    html = _tab(browser, "all")
    assert sorted(_rows(html)) == sorted([retried.call_ref, delivered.call_ref, failed.call_ref])
    assert "2/8" in _row(html, retried.call_ref) and "5/10" not in _row(html, retried.call_ref)
    assert "<progress" not in _row(html, delivered.call_ref)
    assert "3/4" in _row(html, failed.call_ref)
    editor = browser.get(f"/desk/requests/{retried.call_ref}/edit", headers=HX).get_data(as_text=True)
    assert "2/8" in _row(editor, retried.call_ref) and "5/10" not in _row(editor, retried.call_ref)


def test_a_kept_statement_still_sees_the_clock_move(analyst, people):
    """The desk keeps the statements it built for a view; the Blue Light start deadline
    in them is reckoned each time they run. A Blue Light transfer no worker has taken is
    not in Action Required at first, and is, in the same view, once the minute has passed."""
    _user, browser = analyst
    req = _make(people, 1, status=S.DOWNLOADING, priority=Priority.BLUE_LIGHT)
    _transfer(req, state=TransferState.QUEUED, created_at=utcnow())
    db.session.commit()
    for _ in range(2):  # the second time from the kept statements
        html = _tab(browser, "progress")
        assert req.call_ref not in _rows(_tab(browser, "action")) and _counts(html)["Action Required"] == "0"
    with freeze(utcnow() + timedelta(minutes=2)):
        html = _tab(browser, "action")
        assert _rows(html) == [req.call_ref] and _counts(html)["Action Required"] == "1"


# --- The poll's change check ------------------------------------------------------------------


def _poll(browser, token: str, stamp: str | None = None):
    data = {"tab": "all", **({"stamp": stamp} if stamp is not None else {})}
    return browser.post("/desk/table", data=data, headers={**HX, "X-CSRFToken": token})


def _stamp(html: str) -> str:
    return re.search(r'name="stamp" value="([^"]*)"', html).group(1)


def _row(html: str, ref: str) -> str:
    return re.search(rf'<tr id="row-{ref}".*?</tr>', html, re.S).group(0)


CHANGES = ["new request", "status change", "requester's reply", "new transfer", "transfer progress",
           "transfer stalled", "transfer waits for confirmation", "transfer failed", "transfer error retried",
           "undelivered e-mail", "assignee"]


@pytest.mark.parametrize("change", CHANGES)
def test_the_poll_notices_each_change_the_queue_shows(app, analyst, people, change):
    """Nothing changed: 204. Each change the queue shows: the table again, showing it
    (the minute is frozen, so only the change can move the stamp)."""
    user, browser = analyst
    requester, _desk, _patient = people
    waiting = _make(people, 1, status=S.AWAITING_DETAILS)
    moving = _make(people, 2, status=S.DOWNLOADING)
    transfer = _transfer(moving, state=TransferState.RUNNING, instances_total=10, instances_done=2)
    db.session.commit()
    token = csrf_token(browser, "/desk")
    with freeze(utcnow() + timedelta(seconds=1)):
        first = _poll(browser, token)
        stamp = _stamp(first.get_data(as_text=True))
        assert _poll(browser, token, stamp).status_code == 204
        assert _poll(browser, token, stamp).status_code == 204
        moved = sa.update(Transfer).where(Transfer.id == transfer.id)  # as the worker and the watchdog do: no ORM
        if change == "new request":
            _make(people, 3, status=S.NEW)
        elif change == "status change":
            waiting.status = S.ACCEPTED
        elif change == "requester's reply":
            _message(waiting, requester.id, 1)
        elif change == "new transfer":
            _transfer(waiting, state=TransferState.QUEUED)
        elif change == "transfer progress":
            db.session.execute(moved.values(instances_done=3))
        elif change == "transfer stalled":
            db.session.execute(moved.values(state=TransferState.QUEUED, stalled=True, job_id=""))
        elif change == "transfer waits for confirmation":
            db.session.execute(moved.values(state=TransferState.WAITING_CONFIRMATION))
        elif change == "transfer failed":
            db.session.execute(moved.values(state=TransferState.FAILED, last_error="refused"))
        elif change == "transfer error retried":
            db.session.execute(moved.values(state=TransferState.QUEUED, last_error="timed out", attempts=1))
        elif change == "undelivered e-mail":
            db.session.add(OutboxEmail(request_id=waiting.id, to_addr="x@test.uhl", subject="s", body="b",
                                       status=OutboxStatus.FAILED.value))
        elif change == "assignee":
            waiting.assigned_to_id = user.id
        db.session.commit()
        again = _poll(browser, token, stamp)
        assert again.status_code == 200, change
        html = again.get_data(as_text=True)
        assert _stamp(html) != stamp
        assert _poll(browser, token, _stamp(html)).status_code == 204
    shows = {
        "new request": lambda: "IEP-1999-000003" in _rows(html),
        "status change": lambda: "Accepted" in _row(html, waiting.call_ref),
        "requester's reply": lambda: "Requester replied" in _row(html, waiting.call_ref),
        "transfer progress": lambda: "3/10" in _row(html, moving.call_ref),
        "transfer stalled": lambda: "stalled" in _row(html, moving.call_ref),
        "transfer waits for confirmation": lambda: "details differ" in _row(html, moving.call_ref),
        "assignee": lambda: user.name in _row(html, waiting.call_ref),
    }
    assert shows.get(change, lambda: True)(), change


# --- A page's statements --------------------------------------------------------------------


def _statements(browser, fetch) -> int:  # noqa: ANN001
    seen: list[str] = []

    def before(conn, cursor, statement, *args):  # noqa: ANN001
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", before)
    try:
        response = fetch()
        assert response.status_code == 200
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", before)
    return len(seen)


@pytest.mark.parametrize("view", ["full page", "Action Required", "All by patient", "name search"])
def test_a_page_costs_the_same_statements_whatever_it_holds(analyst, people, view):
    """Three requests or sixty (with Blue Light rows, replies, transfers and duplicates):
    the same number of statements for the whole answer (no query per row)."""
    _user, browser = analyst
    requester, desk, _patient = people
    fetch = {
        "full page": lambda: browser.get("/desk"),
        "Action Required": lambda: post_form(browser, "/desk", {"tab_choice": "action"}, headers=HX),
        "All by patient": lambda: post_form(browser, "/desk", {"tab_choice": "all", "sort_choice": "patient"},
                                            headers=HX),
        "name search": lambda: post_form(browser, "/desk", {"tab_choice": "all", "patient_name": "smi"}, headers=HX),
    }[view]

    def add(first: int, count: int) -> None:
        for n in range(first, first + count):
            status = (S.NEW, S.AWAITING_DETAILS, S.DOWNLOADING, S.ACCEPTED)[n % 4]
            req = _make(people, n, status=status, priority=Priority.BLUE_LIGHT if n % 7 == 0 else Priority.STANDARD)
            req.assigned_to_id = desk.id if n % 2 else None
            req.duplicate_of_id = req.id - 1 if n % 5 == 0 and n > first else None
            if status == S.AWAITING_DETAILS:
                _message(req, requester.id, 1)
            if status == S.DOWNLOADING:
                _transfer(req, state=TransferState.RUNNING, stalled=n % 8 == 2, instances_total=5)
        db.session.commit()

    add(1, 3)
    fetch()  # warm: the first answer may load what later ones reuse
    few = _statements(browser, fetch)
    add(100, 60)
    assert _statements(browser, fetch) == few
