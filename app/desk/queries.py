"""The queue's queries: tabs, filters, sorting and keyset pages (no Flask here).

Pages are keyset pages: "the rows after (value, id)" in the chosen order, so the
100,000th request costs what the first does; each sort has an index that serves it
(migration 0002).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import astuple, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from app.extensions import db
from app.ids import MAX_ID, is_id, parse_id
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import LONDON, utcnow
from app.workflow.models import Message, MessageKind

S = Status
BLUE_LIGHT_TARGET = timedelta(hours=4)  # glossary "Blue Light": expected within 4 hours
IN_PROGRESS = (S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.UPLOADING, S.ON_IEP)
NOT_STARTED = (S.NEW, S.AWAITING_DETAILS, S.ACCEPTED, S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED)
# The CD round (Appendix 5; issue 12.5), in its order.
CD_ROUND = (S.AWAITING_DROP_OFF, S.COLLECTED, S.UPLOADED)
CLOSED = (S.DELIVERED, S.COMPLETED, S.CANCELLED, S.DECLINED, S.PURGED)
OPEN = tuple(s for s in Status if s not in CLOSED)

TABS = {
    "action": "Action Required",
    "accepted": "Accepted",
    "progress": "In Progress",
    "failed": "Failed",
    "cds": "CD round",
    "all": "All",
}


# The request a condition is about: the requests table, or the rows a search found
# (an ORM alias of a subquery with the columns these conditions read).
Of = Any


def _requester_replied(of: Of = Request) -> sa.ColumnElement[bool]:
    """The requester wrote after the request was put in Awaiting Details."""
    return _replied_to_requests() if of is Request else _replied(of)


@functools.cache
def _replied_to_requests() -> sa.ColumnElement[bool]:
    # Built once: a statement is immutable, and building it was a part of every render.
    return _replied(Request)


def _replied(of: Of) -> sa.ColumnElement[bool]:
    return sa.exists().where(
        Message.request_id == of.id,
        Message.kind == MessageKind.MESSAGE.value,
        Message.author_id == of.requester_id,
        Message.created_at > of.status_changed_at,
    )


def _transfer_needs_eyes(of: Of = Request) -> sa.ColumnElement[bool]:
    """A transfer of the request stalled (the watchdog re-queued it), waits for the
    analyst to confirm demographics that differ from the register, or is a Blue Light
    transfer whose last attempt failed (it retries, but a trauma patient cannot wait) or
    that no worker has taken within a minute (the pool or Redis is down)."""
    from app.transfers.models import ACTIVE_STATES, Transfer, TransferState
    from app.transfers.service import blue_light_not_started

    return sa.exists().where(
        Transfer.request_id == of.id,
        sa.or_(
            sa.and_(Transfer.stalled, Transfer.state.in_(ACTIVE_STATES)),
            Transfer.state == TransferState.WAITING_CONFIRMATION,
            sa.and_(Transfer.priority == Priority.BLUE_LIGHT, Transfer.last_error != "",
                    Transfer.state.in_(ACTIVE_STATES)),
            blue_light_not_started(),
        ),
    )


# Action Required, as four parts that never overlap (each part's statuses or priority
# exclude the others'), so that its count is the sum of four counts the indexes answer:
# - these statuses always (a CD import waiting for drop-off is where a new one was: its
#   form is still to be checked; one whose contents are uploaded waits to be sent);
ACTION_ALWAYS = (S.NEW, S.FAILED, S.DECLINED, S.AWAITING_DROP_OFF, S.UPLOADED)
# - Blue Light until work starts (its other not-started statuses: the rest are above);
BLUE_LIGHT_WAITING = tuple(s for s in NOT_STARTED if s not in ACTION_ALWAYS)
# - Awaiting Details (not Blue Light: that is the part above) once the requester replied;
# - In Progress when a transfer needs the analyst's eyes.


def _action_parts(of: Of = Request) -> dict[str, tuple[sa.ColumnElement[bool], sa.ColumnElement[bool] | None]]:
    """The parts of Action Required: for each, which rows (by status and priority: what an
    index finds) and what else each of those rows must show (None: nothing else)."""
    return {
        "always": (of.status.in_(ACTION_ALWAYS), None),
        "blue_light": (sa.and_(of.status.in_(BLUE_LIGHT_WAITING), of.priority == Priority.BLUE_LIGHT), None),
        "replied": (sa.and_(of.status == S.AWAITING_DETAILS, of.priority != Priority.BLUE_LIGHT),
                    _requester_replied(of)),
        "eyes": (of.status.in_(IN_PROGRESS), _transfer_needs_eyes(of)),
    }


# The statuses each part of Action Required, and each tab, can show (None: any).
ACTION_PART_STATUSES: dict[str, tuple[Status, ...]] = {
    "always": ACTION_ALWAYS, "blue_light": BLUE_LIGHT_WAITING, "replied": (S.AWAITING_DETAILS,), "eyes": IN_PROGRESS,
}
TAB_STATUSES: dict[str, tuple[Status, ...] | None] = {
    "action": tuple(s for part in ACTION_PART_STATUSES.values() for s in part),
    "accepted": (S.ACCEPTED,),
    "progress": IN_PROGRESS,
    "failed": (S.FAILED,),
    "cds": CD_ROUND,
    "all": None,
}


def tab_condition(tab: str) -> sa.ColumnElement[bool]:
    if tab == "action":
        # The tab's rows, as a page reads them. (The counts add up the parts instead.)
        action = sa.or_(
            Request.status.in_(ACTION_ALWAYS),
            sa.and_(Request.status == S.AWAITING_DETAILS, _requester_replied()),
            sa.and_(Request.priority == Priority.BLUE_LIGHT, Request.status.in_(NOT_STARTED)),
            sa.and_(Request.status.in_(IN_PROGRESS), _transfer_needs_eyes()),
        )
        if _dialect() != "sqlite":
            # PostgreSQL, with statistics, walks the date index and stops after a page.
            return action
        # SQLite has no statistics: it would gather the OR's branches through four
        # indexes (MULTI-INDEX OR) and sort them all for a page (15-25 ms at 100,000
        # requests). Given the tab's statuses, and the OR as one test of each row (a
        # CASE, which no index serves), it reads the status index and stops each
        # status's range once the page is full (2-4 ms).
        return sa.and_(Request.status.in_(TAB_STATUSES["action"] or ()), sa.case((action, 1), else_=0) == 1)
    statuses = TAB_STATUSES.get(tab)
    if statuses is None:
        return sa.true()
    return Request.status == statuses[0] if len(statuses) == 1 else Request.status.in_(statuses)


@dataclass
class Filters:
    """What the analyst asked for; every field optional."""

    call_ref: str = ""
    patient_name: str = ""
    nhs_number: str = ""
    s_number: str = ""
    institution: str = ""
    kind: str = ""
    status: str = ""
    priority: str = ""
    date_from: date | None = None
    date_to: date | None = None
    assigned: str = ""  # "" any, "me", "none", or a user id

    def searches_identity(self) -> bool:
        """A search by who or which: a name, a call reference, an NHS or S number."""
        return any(value.strip() for value in (self.call_ref, self.patient_name, self.nhs_number, self.s_number))

    def conditions(self, me: int) -> list[sa.ColumnElement[bool]]:
        conds: list[sa.ColumnElement[bool]] = []
        if self.call_ref:
            conds.append(Request.call_ref.like(_prefix(self.call_ref.strip().upper()), escape="\\"))
        if self.patient_name:
            family, _, given = self.patient_name.partition(",")
            conds.append(sa.func.upper(Request.family_name).like(_prefix(family.strip().upper()), escape="\\"))
            conds.extend(_prefix_range(sa.func.upper(Request.family_name), family.strip().upper()))
            if given.strip():
                conds.append(sa.func.upper(Request.given_name).like(_prefix(given.strip().upper()), escape="\\"))
        if self.nhs_number:
            conds.append(Request.nhs_number == re.sub(r"[\s-]", "", self.nhs_number))
        if self.s_number:
            conds.append(Request.s_number == self.s_number.strip().upper())
        if self.institution:
            pattern = f"%{_escape(self.institution.lower())}%"
            conds.append(sa.func.lower(Request.institution_name).like(pattern, escape="\\"))
        if self.kind in {k.value for k in Kind}:
            conds.append(Request.kind == Kind(self.kind))
        if self.status in {s.value for s in Status}:
            conds.append(Request.status == Status(self.status))
        if self.priority in {p.value for p in Priority}:
            conds.append(Request.priority == Priority(self.priority))
        if self.date_from:
            conds.append(Request.created_at >= _local_midnight(self.date_from))
        if self.date_to:
            conds.append(Request.created_at < _local_midnight(self.date_to + timedelta(days=1)))
        if self.assigned == "me":
            conds.append(Request.assigned_to_id == me)
        elif self.assigned == "none":
            conds.append(Request.assigned_to_id.is_(None))
        elif (user_id := parse_id(self.assigned)) is not None:
            conds.append(Request.assigned_to_id == user_id)
        return conds


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _prefix(text: str) -> str:
    return _escape(text) + "%"


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _prefix_range(column: sa.ColumnElement[str], prefix: str) -> list[sa.ColumnElement[bool]]:
    """On SQLite, `prefix <= column < next(prefix)`: the same rows as the LIKE beside it,
    but a range SQLite reads from the index on the expression (its LIKE never uses an
    expression index: at 100,000 requests the count of a name search read the whole
    table, 50 ms). SQLite compares text byte by byte, so the range is exactly the strings
    that start with `prefix`. PostgreSQL's LIKE already uses its text_pattern_ops index."""
    if not prefix or _dialect() != "sqlite" or ord(prefix[-1]) >= 0x10FFFF:
        return []
    return [column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1)]


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LONDON)


# Sort key -> (column, label). Every order ends with the id, so keys are unique.
SORTS: dict[str, tuple[Any, str]] = {
    "created": (Request.created_at, "Submitted"),
    "call_ref": (Request.call_ref, "Call reference"),
    "patient": (sa.func.upper(Request.family_name), "Patient"),
    "status": (Request.status, "Status"),
    "priority": (Request.priority, "Priority"),
    "institution": (Request.institution_name, "Institution"),
    "assigned": (Request.assigned_to_id, "Assigned"),
}


@dataclass
class Page:
    rows: list[QueueRow]
    pinned: list[QueueRow]
    next_cursor: str | None
    counts: dict[str, int] = field(default_factory=dict)


def encode_cursor(value: Any, row_id: int) -> str:
    if isinstance(value, datetime):
        value = {"dt": value.isoformat()}
    elif hasattr(value, "value"):
        value = value.value
    raw = json.dumps([value, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR = 1000  # encoded, the longest sort value (an institution, 160 characters) and an id fit well within


def decode_cursor(cursor: str) -> tuple[Any, int] | None:
    """The (value, id) a page ends on; None for a cursor we did not write."""
    if len(cursor) > MAX_CURSOR:  # also spares the JSON parser a crafted nesting of thousands of levels
        return None
    try:
        value, row_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, RecursionError):
        return None
    if not is_id(row_id):
        return None
    if isinstance(value, dict) and "dt" in value:
        try:
            value = datetime.fromisoformat(value["dt"])
        except (TypeError, ValueError):
            return None
    return value, row_id


def _cursor_after(cursor: str | None, sort: str) -> tuple[Any, int] | None:
    """The (value, id) to continue after, the value typed for the sort's column; None (the
    first page) for a cursor we did not write, or one written for another sort (review 11.7:
    a value of another type is an error in the query on PostgreSQL)."""
    after = decode_cursor(cursor) if cursor else None
    if after is None:
        return None
    value, row_id = after
    if sort == "assigned":
        value = 0 if value is None else value  # NULL assignees sort as 0
        fits = type(value) is int and 0 <= value <= MAX_ID
    elif sort == "created":
        fits = isinstance(value, datetime)
    elif sort in ("status", "priority"):
        enum_cls = Status if sort == "status" else Priority
        fits = isinstance(value, str) and value in {m.value for m in enum_cls}
        value = enum_cls(value) if fits else None
    else:  # call_ref, patient, institution: text
        fits = isinstance(value, str)
    return (value, row_id) if fits else None


def _sort_value(req: QueueRow, sort: str) -> Any:
    if sort == "patient":
        return req.family_name.upper()
    return getattr(req, {"created": "created_at", "assigned": "assigned_to_id"}.get(sort, sort))


@dataclass(frozen=True, slots=True)
class Person:
    name: str


@dataclass(frozen=True, slots=True)
class EarlierRequest:
    call_ref: str
    status: Status


@dataclass(frozen=True, slots=True)
class QueueRow:
    """What a queue row shows of a request (desk/_row.html), under the names a Request
    has, so that the template takes either. Read with Core, not as ORM objects: building
    and instrumenting sixty requests of fifty columns each, with their people, was a
    third of a page's time at 100,000 requests."""

    id: int
    call_ref: str
    kind: Kind
    status: Status
    priority: Priority
    created_at: datetime
    required_by: date | None
    family_name: str
    given_name: str
    s_number: str
    institution_name: str
    assigned_to_id: int | None
    assigned_to: Person | None
    duplicate_of: EarlierRequest | None
    replied: bool  # the requester wrote last (the "Requester replied" badge)

    @property
    def patient_display_name(self) -> str:
        return f"{self.family_name.upper()}, {self.given_name}"


_ROW_COLUMNS = (
    Request.id, Request.call_ref, Request.kind, Request.status, Request.priority, Request.created_at,
    Request.required_by, Request.family_name, Request.given_name, Request.s_number, Request.institution_name,
    Request.assigned_to_id,
)


def _requester_wrote_last() -> sa.ColumnElement[bool]:
    """The requester's latest message is newer than anything the desk said to them (a
    message, or a status change with its note): issue 13.3. Desk-only notes are not said
    to the requester, and the desk's automatic status changes (no author) are not an
    answer, so neither hides a reply. NULL (not shown) when the requester never wrote.
    Two probes of the (request, kind, author, created_at) index per row."""
    def latest(*conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect:
        return (sa.select(sa.func.max(Message.created_at)).where(Message.request_id == Request.id, *conditions)
                .correlate(Request).scalar_subquery())

    reply = latest(Message.kind == MessageKind.MESSAGE.value, Message.author_id == Request.requester_id)
    desk_said = latest(Message.kind.in_([MessageKind.MESSAGE.value, MessageKind.SYSTEM.value]),
                       Message.author_id.is_not(None), Message.author_id != Request.requester_id)
    never = sa.literal(datetime(1900, 1, 1, tzinfo=UTC), type_=Message.created_at.type)
    return reply > sa.func.coalesce(desk_said, never)


@functools.cache
def _rows_select() -> sa.Select:
    """One statement for the rows: their columns, the assignee's name, the earlier request
    each duplicates and whether the requester wrote last (not the requester: no row shows
    them). Built once: each page adds its conditions to a copy.

    Not the latest transfer's bar: joined here, it turned both planners' heads (SQLite
    walked the whole date index to spare itself sorting 51 rows, 80 ms; PostgreSQL, its
    estimate of the Blue Light rows off, hashed all 72,000 transfers, 16 ms), so the page's
    transfers are a statement of their own (`active_transfers`)."""
    from app.auth.models import User

    earlier = so.aliased(Request)
    return (
        sa.select(*_ROW_COLUMNS, User.name, earlier.call_ref, earlier.status, _requester_wrote_last())
        .select_from(Request)
        .outerjoin(User, User.id == Request.assigned_to_id)
        .outerjoin(earlier, earlier.id == Request.duplicate_of_id)
    )


def _queue_rows(stmt: sa.Select) -> list[QueueRow]:
    rows = []
    for (row_id, call_ref, kind, status, priority, created_at, required_by, family_name, given_name, s_number,
         institution_name, assigned_to_id, assignee, earlier_ref, earlier_status, replied) in db.session.execute(stmt):
        rows.append(QueueRow(
            row_id, call_ref, kind, status, priority, created_at, required_by, family_name, given_name, s_number,
            institution_name, assigned_to_id, Person(assignee) if assignee is not None else None,
            EarlierRequest(earlier_ref, earlier_status) if earlier_ref is not None else None, bool(replied),
        ))
    return rows


def queue_row(request_id: int) -> QueueRow:
    """One request as its queue row shows it (the editor's row, after a save)."""
    return _queue_rows(_rows_select().where(Request.id == request_id))[0]


def is_pinned() -> sa.ColumnElement[bool]:
    """Blue Light requests not yet delivered or closed: shown above everything."""
    # The open statuses listed, not "not closed": a list is a range of the (priority,
    # status) index; NOT IN read every Blue Light request there ever was (PostgreSQL:
    # 6,700 rows at 100,000 requests, 6 ms, for the 15 on top).
    return sa.and_(Request.priority == Priority.BLUE_LIGHT, Request.status.in_(OPEN))


def queue_page(
    *,
    tab: str,
    filters: Filters,
    me: int,
    sort: str = "created",
    descending: bool = True,
    cursor: str | None = None,
    size: int = 50,
) -> Page:
    """One page of the queue, with the pinned Blue Light rows on the first page."""
    sort = sort if sort in SORTS else "created"
    after = _cursor_after(cursor, sort)
    rows_stmt, pinned_stmt = _page_statements(
        _dialect(), tab if tab in TABS else "action", astuple(filters), me, sort, descending, after, size)
    rows = _queue_rows(rows_stmt)
    next_cursor = None
    if len(rows) > size:
        rows = rows[:size]
        last = rows[-1]
        next_cursor = encode_cursor(_sort_value(last, sort), last.id)
    pinned = _queue_rows(pinned_stmt) if pinned_stmt is not None else []
    return Page(rows=rows, pinned=pinned, next_cursor=next_cursor)


# The statements built for a view are kept, per process, for the most recent
# PAGES_KEPT pages and COUNTS_KEPT filter sets: the poll, a tab revisited and another
# analyst's same view run them again without building them and hashing their shape for
# SQLAlchemy's compiled cache (1-1.5 ms of a render at 100,000 requests, bench/desk.py).
# Each costs memory (measured: 36-114 KB a page's statements, 80-125 KB a count
# statement), so at most about 14 MB a process. Everything a statement is made from is
# in its key (the dialect, each filter, the analyst for "assigned to me", the tab, the
# sort, the page's cursor, the caps); the one value that moves by itself, the Blue Light
# start deadline, is a parameter computed each time the statement runs.
PAGES_KEPT = 64
COUNTS_KEPT = 32


@functools.lru_cache(maxsize=PAGES_KEPT)
def _page_statements(
    dialect: str, tab: str, filter_values: tuple, me: int, sort: str, descending: bool,
    after: tuple[Any, int] | None, size: int,
) -> tuple[sa.Select, sa.Select | None]:
    """The page's rows, and the pinned rows (first page only). `dialect` is read by what
    builds them (`tab_condition`, the name range), through the session: here it is the key."""
    column = SORTS[sort][0]
    base = [tab_condition(tab), *Filters(*filter_values).conditions(me)]
    stmt = sa.select(Request.id).where(*base, sa.not_(is_pinned()))
    # NULL assignees sort as 0 so that keyset comparisons stay well-defined.
    key = sa.func.coalesce(column, 0) if sort == "assigned" else column
    order = (key.desc(), Request.id.desc()) if descending else (key.asc(), Request.id.asc())
    if after is not None:
        value, row_id = after
        # A row-value comparison is an index range on both SQLite and PostgreSQL; the
        # equivalent OR of two conditions makes both walk the index from the top.
        after_row = sa.tuple_(sa.literal(value, type_=key.type), sa.literal(row_id))
        row = sa.tuple_(key, Request.id)
        stmt = stmt.where(row < after_row if descending else row > after_row)
        # The same bound on the sort value alone, implied by the row value: SQLite uses a
        # row value as a range only on an index of exactly (key, id); this one is a range
        # on any index that starts with the key (page 101 by patient: 0.1 ms, not 10-30).
        bound = sa.literal(value, type_=key.type)
        stmt = stmt.where(key <= bound if descending else key >= bound)
    # The page's ids first, then their rows: when a tab or filter has thousands of rows
    # out of order (Action Required, a name search), the planner sorts thousands of ids
    # instead of thousands of whole rows joined to their people (SQLite joins before it
    # sorts: 20 ms of Action Required's 22 at 100,000 requests).
    page_ids = stmt.order_by(*order).limit(size + 1).subquery("page")
    rows = _rows_select().join(page_ids, Request.id == page_ids.c.id).order_by(*order)
    pinned = None if after is not None else (
        _rows_select().where(*base, is_pinned()).order_by(Request.created_at.asc()))
    return rows, pinned


ALL_COUNT_CAP = 1_000  # past this many, "All" says "1,000+" (unless a search counted them all)
SEARCH_PASS_LIMIT = 5_000  # a search finding up to this many is counted in one pass over its rows


@dataclass(frozen=True)
class TabCounts:
    """Each tab's count under the current filters. `capped` names the tabs with more than
    ALL_COUNT_CAP rows: their count is the cap, and the label says "1,000+"."""

    counts: dict[str, int]
    capped: frozenset[str] = frozenset()

    def __getitem__(self, tab: str) -> int:
        return self.counts[tab]

    def label(self, tab: str) -> str:
        """The count as the tab shows it: exact, or "1,000+" once capped."""
        return f"{self.counts[tab]:,}+" if tab in self.capped else str(self.counts[tab])


def _counted(part: sa.ColumnElement[bool], test: sa.ColumnElement[bool] | None = None) -> sa.ColumnElement[int]:
    # A part's own test is counted row by row (CASE), not joined: PostgreSQL would
    # otherwise hash every message to answer for a thousand rows (7 ms, not 2).
    return sa.func.count(sa.case((part if test is None else sa.and_(part, test), 1)))


@functools.lru_cache(maxsize=COUNTS_KEPT)
def _search_count_statement(dialect: str, filter_values: tuple, me: int, limit: int) -> sa.Select:
    """Every count in one pass over the rows a search finds (a name, a call reference, an
    NHS or S number: usually a few rows, found through their own index), instead of one
    walk of the status index per tab that reads each row to test the search (17 ms at
    100,000 requests for a common name prefix on SQLite). The rows are read once, with
    the columns the tabs test, up to `limit` + 1 of them: past the limit the caller
    counts per tab."""
    conds = Filters(*filter_values).conditions(me)
    found = (
        sa.select(Request.id, Request.status, Request.priority, Request.requester_id, Request.status_changed_at)
        .where(*conds).limit(limit + 1).subquery("found")
    )
    row_of: Of = so.aliased(Request, found)
    columns = [_counted(rows, test).label(f"action_{name}") for name, (rows, test) in _action_parts(row_of).items()]
    columns += [_counted(row_of.status.in_(statuses)).label(tab) for tab, statuses in TAB_STATUSES.items()
                if tab != "action" and statuses is not None]
    return sa.select(*columns, sa.func.count().label("all")).select_from(row_of)


def tab_counts(filters: Filters, me: int) -> TabCounts:
    """Each tab's count under the current filters, in one statement (two for a search
    that finds more than ALL_COUNT_CAP requests).

    The working tabs count exactly, each from its own statuses only (what the status
    index finds); Action Required as the sum of its parts, so that its plain parts are
    counted from an index alone and only the rows in Awaiting Details and In Progress
    are read for their messages and transfers. A tab or part whose statuses the status
    filter excludes is 0 without asking. "All" is every request there ever was: it
    counts to ALL_COUNT_CAP + 1 and stops, so that no render reads 100,000 rows to print
    a number nobody acts on; under the cap (a search, a filter) it is exact. A search by
    identity (name, call reference, NHS or S number) finding up to SEARCH_PASS_LIMIT rows
    is counted in one pass over its rows, All exactly.
    """
    key = (_dialect(), astuple(filters), me)
    found: dict[str, int] | None = None
    if filters.searches_identity():
        row = db.session.execute(_search_count_statement(*key, SEARCH_PASS_LIMIT)).one()._mapping
        found = None if row["all"] > SEARCH_PASS_LIMIT else dict(row)
    searched = found is not None
    if found is None:
        found = dict(db.session.execute(_per_tab_count_statement(*key, ALL_COUNT_CAP)).one()._mapping)
    counts = {tab: found.get(tab, 0) for tab in TABS}
    counts["action"] = sum(found.get(f"action_{name}", 0) for name in ACTION_PART_STATUSES)
    if counts["all"] > ALL_COUNT_CAP and not searched:  # a search's pass counted All exactly
        return TabCounts({**counts, "all": ALL_COUNT_CAP}, frozenset({"all"}))
    return TabCounts(counts)


@functools.lru_cache(maxsize=COUNTS_KEPT)
def _per_tab_count_statement(dialect: str, filter_values: tuple, me: int, cap: int) -> sa.Select:
    """Each tab, and each part of Action Required, counted from its statuses' index range;
    All up to `cap` + 1."""
    filters = Filters(*filter_values)
    conds = filters.conditions(me)
    wanted = Status(filters.status) if filters.status in {s.value for s in Status} else None

    def excluded(statuses: tuple[Status, ...]) -> bool:
        return wanted is not None and wanted not in statuses

    def count(rows: sa.ColumnElement[bool], label: str, test: sa.ColumnElement[bool] | None = None) -> sa.Label:
        counted = sa.func.count(Request.id) if test is None else _counted(test)
        return sa.select(counted).where(rows, *conds).scalar_subquery().label(label)

    columns = [count(rows, f"action_{name}", test) for name, (rows, test) in _action_parts().items()
               if not excluded(ACTION_PART_STATUSES[name])]
    columns += [count(tab_condition(tab), tab) for tab, statuses in TAB_STATUSES.items()
                if tab != "action" and statuses is not None and not excluded(statuses)]
    some = sa.select(Request.id).where(*conds).limit(cap + 1).subquery()
    columns.append(sa.select(sa.func.count()).select_from(some).scalar_subquery().label("all"))
    return sa.select(*columns)


@dataclass(frozen=True, slots=True)
class TransferBar:
    """What a queue row shows of its request's latest transfer (desk/_row.html)."""

    state: str  # a TransferState
    instances_done: int
    instances_total: int
    stalled: bool
    is_unfinished: bool


def active_transfers(request_ids: list[int]) -> dict[int, TransferBar]:
    """The latest transfer of each request on the page, in one query (for the row's bar):
    the five columns the row shows, not whole transfers."""
    from app.transfers.models import UNFINISHED_STATES, Transfer

    if not request_ids:
        return {}
    latest = (
        sa.select(sa.func.max(Transfer.id)).where(Transfer.request_id.in_(request_ids)).group_by(Transfer.request_id)
    )
    rows = db.session.execute(
        sa.select(Transfer.request_id, Transfer.state, Transfer.instances_done, Transfer.instances_total,
                  Transfer.stalled).where(Transfer.id.in_(latest)))
    return {request_id: TransferBar(state, done, total, stalled, state in UNFINISHED_STATES)
            for request_id, state, done, total, stalled in rows}


def time_left(req: Request | QueueRow) -> timedelta:
    """Time left of the Blue Light 4-hour target (negative once breached)."""
    # SQLite hands back naive datetimes; they were stored as UTC.
    created = req.created_at if req.created_at.tzinfo else req.created_at.replace(tzinfo=UTC)
    return created + BLUE_LIGHT_TARGET - utcnow()


@functools.cache
def _stamp_statement() -> sa.Select:
    """What the queue stamp reads: one statement of index look-ups, whatever the number of
    requests, built once (every open desk polls it every 5 s). It notices:

    - a new request (the highest id) and a changed one (the latest `updated_at`, moved
      by every change of a request: status, assignee, details);
    - a new message (the highest message id): a requester's reply puts a request in
      Awaiting Details into Action Required and gives it its badge;
    - transfers: a new one (the highest id), progress (the latest heartbeat), and the
      unfinished ones' number, instances done, attempts, and how many are stalled, wait
      for a confirmation or carry an error (a transfer that finishes or fails leaves
      them; one that is retried comes back): what the rows' bars and Action Required show;
    - the banners: arrivals matching no request, refused files, undelivered e-mails
      (their counts are what the banners show: see `QueueStamp`).
    """
    from app.transfers.models import UNFINISHED_STATES, InboundStudy, Transfer, TransferState
    from app.transfers.quarantine import QuarantinedFile
    from app.workflow.models import OutboxEmail, OutboxStatus

    def scalar(*columns: Any, where: sa.ColumnElement[bool] | None = None) -> sa.ScalarSelect:
        stmt = sa.select(*columns)
        return (stmt if where is None else stmt.where(where)).scalar_subquery()

    unfinished = Transfer.state.in_(UNFINISHED_STATES)
    return sa.select(
        scalar(sa.func.max(Request.id)),
        scalar(sa.func.max(Request.updated_at)),
        scalar(sa.func.max(Message.id)),
        scalar(sa.func.max(Transfer.id)),
        scalar(sa.func.max(Transfer.progressed_at)),
        scalar(sa.func.count(Transfer.id), where=unfinished),
        scalar(sa.func.sum(Transfer.instances_done), where=unfinished),
        scalar(sa.func.sum(Transfer.attempts), where=unfinished),
        scalar(sa.func.count(Transfer.id), where=sa.and_(unfinished, Transfer.stalled)),
        scalar(sa.func.count(Transfer.id), where=Transfer.state == TransferState.WAITING_CONFIRMATION),
        scalar(sa.func.count(Transfer.id), where=sa.and_(unfinished, Transfer.last_error != "")),
        scalar(sa.func.max(InboundStudy.last_received_at)),
        scalar(sa.func.count(InboundStudy.id),
               where=sa.and_(InboundStudy.request_id.is_(None), InboundStudy.purged_at.is_(None))).label("unmatched"),
        scalar(sa.func.max(QuarantinedFile.id)),
        scalar(sa.func.count(QuarantinedFile.id), where=QuarantinedFile.purged_at.is_(None)).label("refused"),
        scalar(sa.func.count(OutboxEmail.id),
               where=OutboxEmail.status == OutboxStatus.FAILED.value).label("undelivered"),
    )


@dataclass(frozen=True)
class QueueStamp:
    """What `_stamp_statement` read: `text` changes whenever something the queue shows may
    have changed, and every minute (the Blue Light clocks); the banners' counts come with it,
    so that Action Required does not ask for them again."""

    text: str
    unmatched: int  # studies on the gateway that match no request
    refused: int  # instances the gateway refused, still in quarantine
    undelivered: int  # e-mails that could not be delivered


def queue_stamp() -> QueueStamp:
    values = db.session.execute(_stamp_statement()).one()
    minute = utcnow().strftime("%H%M")
    return QueueStamp(":".join(str(v) for v in (*values, minute)),
                      unmatched=values.unmatched, refused=values.refused, undelivered=values.undelivered)
