"""The compliance report's figures (guideline section 4; issue 14.6). No Flask here.

A report is about one period, a calendar month, half-year or year on London's clocks, and
counts what began in it: the requests *submitted* in it (each followed to where it is
now: its status today is its "final status"), the transfers *started* in it, the CD
imports *submitted* in it. A figure never mixes in a request submitted in another period.

Where each moment comes from:
- submission: `Request.created_at`;
- every status a request reached, and when: the audit trail's status-change rows
  (`machine.transition` writes "<call ref> <from> -> <to>", one row per change, and the
  table is append-only), so a request's first Delivered, first Completed (the Delivered
  e-mail sent, issue 13.5), its Awaiting Details spells and the 14-day auto-cancel
  (`audit.SYSTEM_AUTO_CANCEL`) are read there;
- why an institution declined: `Request.decline_reason` (guideline 2.5, kept after the
  request is re-processed);
- transfers: the `transfers` row (state, attempts, `partial_ok`, bytes, last error) and the
  audit's "transfer <id> retry" rows for an analyst's Retry (which resets `attempts`);
- a CD's drop-off: when the desk first had it in hand, collected from the reception
  (Collected) or uploaded through the browser (Uploaded), whichever came first; PACS is
  the request's first Delivered.

Counting is done by the database (grouped counts and sums). Moments come back as whole
seconds since 1970 (`epoch`, truncated to the second: the same integer on SQLite and
PostgreSQL, and no datetime to parse per row), a duration is the difference of two, and
the median and the 90th percentile are computed here over one group's durations, so they
are identical on both databases: `percentile` is PostgreSQL's `percentile_cont` (linear
interpolation between the closest ranks).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from app import audit
from app.auth.models import User
from app.auth.training import TRAINED_ROLES, untrained_desk_staff
from app.extensions import db
from app.printing.collections import DROP_OFF_SITES
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import LONDON, aware, local_now
from app.transfers.models import Direction, Transfer, TransferState
from app.workflow import hours
from app.workflow.machine import DECLINE_REASONS

S = Status
FOUR_HOURS = timedelta(hours=4)  # glossary "Blue Light": expected within 4 hours
FIRST_YEAR = 2000  # no request of the desk is older; a year before it is a typing slip
MB = 1_048_576  # as the transfer widgets show sizes

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PERIOD_KINDS = {"month": "A month", "half": "A half-year", "year": "A year"}
HALVES = {1: "January to June", 2: "July to December"}
DIRECTIONS = {
    Direction.OUTBOUND: "Outbound (exports, trauma)",
    Direction.INBOUND: "Inbound (gateway to PACS)",
    Direction.PULL: "Pull (remote to gateway)",
}


# --- The period -------------------------------------------------------------------------------


class PeriodError(ValueError):
    """The period asked for is not one: the message says why; `field` names the control."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Period:
    """A calendar month (`number` 1-12), half-year (1: January-June, 2: July-December) or
    year (`number` 0), on London's clocks."""

    kind: str
    year: int
    number: int = 0

    @property
    def first_day(self) -> date:
        if self.kind == "month":
            return date(self.year, self.number, 1)
        return date(self.year, 1 if self.kind == "year" or self.number == 1 else 7, 1)

    @property
    def next_first_day(self) -> date:
        """The day after the period's last (exclusive end)."""
        months = {"month": 1, "half": 6, "year": 12}[self.kind]
        index = self.first_day.month - 1 + months
        return date(self.year + index // 12, index % 12 + 1, 1)

    @property
    def last_day(self) -> date:
        return self.next_first_day - timedelta(days=1)

    def bounds(self) -> tuple[datetime, datetime]:
        """Start (inclusive) and end (exclusive) in UTC: midnight in London at each end.
        UTC, because SQLite compares the stored text, which is UTC (as app.cds.chart does)."""
        return (datetime.combine(self.first_day, time(0), tzinfo=LONDON).astimezone(UTC),
                datetime.combine(self.next_first_day, time(0), tzinfo=LONDON).astimezone(UTC))

    @property
    def label(self) -> str:
        if self.kind == "month":
            return f"{MONTHS[self.number - 1]} {self.year}"
        if self.kind == "half":
            return f"{HALVES[self.number]} {self.year}"
        return str(self.year)

    @property
    def slug(self) -> str:
        """For file names and the CSV: 2026-03, 2026-H1, 2026."""
        if self.kind == "month":
            return f"{self.year}-{self.number:02d}"
        return f"{self.year}-H{self.number}" if self.kind == "half" else str(self.year)

    def query(self) -> dict[str, str]:
        """The URL parameters that name this period."""
        args = {"period": self.kind, "year": str(self.year)}
        if self.kind == "month":
            args["month"] = str(self.number)
        elif self.kind == "half":
            args["half"] = str(self.number)
        return args

    def in_progress(self, today: date) -> bool:
        return self.first_day <= today <= self.last_day


def last_complete_month(today: date) -> Period:
    """The default: the last month that has ended by `today`."""
    last = today.replace(day=1) - timedelta(days=1)
    return Period("month", last.year, last.month)


def _number(raw: str | None, low: int, high: int, message: str, field: str) -> int:
    text = (raw or "").strip()
    # isdecimal, not isdigit: "²" is a digit to isdigit and not a number to int().
    if not text or len(text) > 4 or not text.isascii() or not text.isdecimal() or not low <= int(text) <= high:
        raise PeriodError(message, field)
    return int(text)


def parse_period(args: Mapping[str, str], today: date) -> Period:
    """The period the URL asks for (`period`, `year`, `month`, `half`), or PeriodError.
    Nothing asked: the last complete month."""
    kind = (args.get("period") or "").strip()
    if not kind and not any(args.get(name) for name in ("year", "month", "half")):
        return last_complete_month(today)
    if kind not in PERIOD_KINDS:
        raise PeriodError("Choose the period: a month, a half-year or a year.", "period")
    year = _number(args.get("year"), FIRST_YEAR, today.year,
                   f"The year must be four digits, from {FIRST_YEAR} to {today.year}.", "year")
    number = 0
    if kind == "month":
        number = _number(args.get("month"), 1, 12, "Choose the month (January to December).", "month")
    elif kind == "half":
        number = _number(args.get("half"), 1, 2, "Choose the half-year: January to June, or July to December.",
                         "half")
    period = Period(kind, year, number)
    if period.first_day > today:
        raise PeriodError(f"{period.label} has not started yet: choose a period that has.",
                          "month" if kind == "month" else "half" if kind == "half" else "year")
    return period


# --- Figures -----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont over sorted values: linear interpolation between the
    closest ranks; None for no values. percentile(v, 0.5) is the median."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Spread:
    """How long something took: how many, the median and the 90th percentile (seconds)."""

    count: int
    median: float | None
    p90: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Spread:
        ordered = sorted(seconds)
        return cls(len(ordered), percentile(ordered, 0.5), percentile(ordered, 0.9))


@dataclass(frozen=True)
class Count:
    label: str
    count: int


@dataclass(frozen=True)
class Table:
    """Counts with named rows and columns (cells[row][column]); totals are computed."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: tuple[tuple[int, ...], ...]

    def row_total(self, index: int) -> int:
        return sum(self.cells[index])

    def column_total(self, index: int) -> int:
        return sum(row[index] for row in self.cells)

    @property
    def total(self) -> int:
        return sum(map(sum, self.cells))


@dataclass(frozen=True)
class OutOfHours:
    kind: str
    submitted: int
    out_of_hours: int


@dataclass(frozen=True)
class Turnaround:
    """Submission to Delivered and to Completed, for one kind and priority ("All ..." rows
    aggregate)."""

    kind: str
    priority: str
    submitted: int
    delivered: Spread
    completed: Spread


@dataclass(frozen=True)
class Target:
    """The 4-hour target for one group. `counted` leaves out requests that ended Cancelled
    or Declined (never delivered, and not the desk's to deliver)."""

    group: str
    submitted: int
    cancelled_or_declined: int
    within: int
    later: int

    @property
    def counted(self) -> int:
        return self.submitted - self.cancelled_or_declined

    @property
    def not_delivered(self) -> int:
        return self.counted - self.within - self.later

    @property
    def share(self) -> float | None:
        """Delivered within 4 hours, as a fraction of the requests counted."""
        return self.within / self.counted if self.counted else None


@dataclass(frozen=True)
class Awaiting:
    """Awaiting Details (guideline 2.4) for one kind: requests that went there, how many
    times, how long each time (spells that ended), still waiting, auto-cancelled at 14 days."""

    kind: str
    submitted: int
    requests: int
    spells: int
    still_waiting: int
    spell: Spread
    auto_cancelled: int


@dataclass(frozen=True)
class Decline:
    """Requests declined for a reason (guideline 2.5 a), and how many of them the desk
    re-processed (2.5 b): now neither Declined nor Cancelled."""

    reason: str
    declined: int
    reprocessed: int


@dataclass(frozen=True)
class Transfers:
    direction: str
    started: int
    delivered: int
    failed: int
    cancelled: int
    in_progress: int
    retried: int
    partial: int
    bytes_moved: int

    @property
    def mb_moved(self) -> float:
        return self.bytes_moved / MB


@dataclass(frozen=True)
class CdSite:
    """CD imports of one drop-off site: requests, CDs, delivered to PACS, and the time from
    drop-off (collected or uploaded, whichever first) to Delivered."""

    site: str
    site_name: str
    requests: int
    cds: int
    delivered: int
    to_pacs: Spread


@dataclass(frozen=True)
class Report:
    period: Period
    generated_at: datetime
    in_progress: bool
    requests: int
    by_kind: tuple[Count, ...]
    by_priority: tuple[Count, ...]
    kind_priority: Table  # rows: kinds, columns: priorities
    status_kind: Table  # rows: statuses reached by some request, columns: kinds
    out_of_hours: tuple[OutOfHours, ...]  # per kind, then "All kinds"
    turnaround: tuple[Turnaround, ...]
    targets: tuple[Target, ...]
    awaiting: tuple[Awaiting, ...]  # per kind, then "All kinds"
    declines: tuple[Decline, ...]
    transfers: tuple[Transfers, ...]  # per direction, then "All directions"
    failures: tuple[Count, ...]
    cds: tuple[CdSite, ...]  # per site, then "All sites"
    notes: tuple[str, ...] = field(default=())
    # Training (guideline section 3), as it stands when the report is made, not per period:
    # how many active staff hold a desk role, and the names of those with no training record.
    desk_staff: int = 0
    untrained: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return self.requests == 0 and self.transfers[-1].started == 0


ALL_KINDS = "All kinds"
ALL_PRIORITIES = "All priorities"
BLUE_LIGHT_GROUP = "Blue Light (imports, exports, CDs)"
TRAUMA_GROUP = "Trauma transfers (Appendix 4)"

# Transfer failures, by the words of the reason the engine stored (app/dicom/errors.py,
# app/transfers/engine.py): the first group whose words the reason holds. Lower case.
FAILURE_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Instances missing or refused", ("could not be sent", "not at the destination", "did not come from",
                                      "holds no instances", "instances failed to transfer")),
    ("Could not connect", ("connection refused", "unknown host", "cannot reach", "could not connect")),
    ("No answer in time", ("did not answer",)),
    ("Association rejected", ("association rejected", "does not know our ae title")),
    ("Connection dropped", ("aborted the association", "closed the connection", "association ended",
                            "sent no status")),
    ("Refused by the node", ("(0x", "presentation context", "accepted none")),
    ("Error in the desk", ("unexpected error",)),
)
OTHER_FAILURE = "Other"


def failure_reason(last_error: str) -> str:
    """The group of a failed transfer's reason (FAILURE_REASONS), else "Other"."""
    text = last_error.lower()
    for label, words in FAILURE_REASONS:
        if any(word in text for word in words):
            return label
    return OTHER_FAILURE


def _to(status: Status) -> sa.ColumnElement[bool]:
    """An audit detail that records a change *to* `status` (machine.transition's words)."""
    return audit.AuditEvent.detail.like(f"% -> {status.value}")


def _status_changes() -> sa.ColumnElement[bool]:
    return audit.AuditEvent.action == audit.Action.STATUS_CHANGE.value


class epoch(sa.sql.functions.FunctionElement[int]):  # noqa: N801 - an SQL function's name
    """A moment as whole seconds since 1970 (UTC), truncated to the second: the same integer
    on SQLite (which stores UTC text) and PostgreSQL (timestamptz)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(epoch, "sqlite")
def _epoch_sqlite(element: epoch, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch, "postgresql")
def _epoch_postgresql(element: epoch, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM date_trunc('second', {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@dataclass(frozen=True)
class _Milestones:
    """One request's moments, in whole seconds since 1970 (`epoch`)."""

    kind: Kind
    priority: Priority
    site: str
    created: int
    delivered: int | None
    completed: int | None
    handed_in: int | None


def _core(statement: sa.Select[Any]) -> sa.CursorResult[Any]:
    """Run a statement of many rows on the session's connection, without the ORM's row
    handling (half the time, for tens of thousands of plain rows)."""
    return db.session.connection().execute(statement)


# A cohort of at most this many requests has its audit rows looked up request by request on
# PostgreSQL (a month is about 4,000). See `_per_request`.
PER_REQUEST_LIMIT = 6_000


def _per_request(cohort_size: int) -> bool:
    """Whether to read the cohort's status changes request by request (`LATERAL`) rather
    than in one pass over the audit trail.

    Asked for `request_id IN (the cohort)`, PostgreSQL's cost model (random_page_cost 4:
    every index look-up a disk read) prefers a parallel sequential scan of the whole audit
    trail with a hash join even for a month's 4,000 requests, and takes about five times as
    long as 4,000 look-ups of `ix_audit_events_request_action` do (bench/README.md,
    reports). A `LATERAL` subquery that aggregates (or has `OFFSET 0`) is run once per
    request, so it reads the cohort's rows only. For a half-year or a year (a quarter to
    half of the trail) one pass is the cheaper, and a `LATERAL` over 50,000 requests is
    costed past the JIT thresholds (jit_above_cost and jit_optimize_above_cost: 4.5 s
    against 1.9 s without JIT, measured): the single pass stays. SQLite has no `LATERAL`
    and needs none: with no statistics it walks the `IN` list through the index whatever
    its length."""
    return db.session.get_bind().dialect.name == "postgresql" and cohort_size <= PER_REQUEST_LIMIT


def _milestones(cohort: sa.ColumnElement[bool], cohort_size: int) -> list[_Milestones]:
    """For each request of the cohort that reached Delivered, Completed, Collected or
    Uploaded: the first time it reached each (one query, moments as integers).

    Either each request's status changes are aggregated by a `LATERAL` subquery (a few
    index look-ups a request; see `_per_request`), or the status changes are picked by
    `request_id IN (the cohort)`, grouped, then joined to their requests, which are
    filtered by the cohort too so that the join reads only the cohort's requests."""
    event = audit.AuditEvent
    firsts = [sa.func.min(sa.case((_to(S.DELIVERED), event.at))).label("delivered"),
              sa.func.min(sa.case((_to(S.COMPLETED), event.at))).label("completed"),
              sa.func.min(sa.case((sa.or_(_to(S.COLLECTED), _to(S.UPLOADED)), event.at))).label("handed_in")]
    reached = sa.or_(_to(S.DELIVERED), _to(S.COMPLETED), _to(S.COLLECTED), _to(S.UPLOADED))
    found: sa.FromClause
    if _per_request(cohort_size):
        found = (sa.select(*firsts).where(event.request_id == Request.id, _status_changes(), reached)
                 .lateral("firsts"))
        # One row a request, NULLs where it reached none of them: as the grouped form, keep
        # only those that reached one.
        joined = sa.join(Request, found, sa.true())
        any_reached = sa.or_(found.c.delivered.is_not(None), found.c.completed.is_not(None),
                             found.c.handed_in.is_not(None))
    else:
        found = (sa.select(event.request_id.label("request_id"), *firsts)
                 .where(event.request_id.in_(sa.select(Request.id).where(cohort)), _status_changes(), reached)
                 .group_by(event.request_id)
                 .subquery("firsts"))
        joined = sa.join(Request, found, found.c.request_id == Request.id)
        any_reached = sa.true()
    rows = _core(
        sa.select(Request.kind, Request.priority, Request.drop_off_site, epoch(Request.created_at),
                  epoch(found.c.delivered), epoch(found.c.completed), epoch(found.c.handed_in))
        .select_from(joined)
        .where(cohort, any_reached)
    )
    return [_Milestones(*row) for row in rows.tuples()]


def _seconds(later: int | None, earlier: int) -> float | None:
    return None if later is None else float(later - earlier)


def _turnaround(counts: Mapping[tuple[Kind, Priority], int], milestones: list[_Milestones]) -> tuple[Turnaround, ...]:
    delivered: dict[tuple[Kind, Priority], list[float]] = defaultdict(list)
    completed: dict[tuple[Kind, Priority], list[float]] = defaultdict(list)
    for m in milestones:
        if (seconds := _seconds(m.delivered, m.created)) is not None:
            delivered[(m.kind, m.priority)].append(seconds)
        if (seconds := _seconds(m.completed, m.created)) is not None:
            completed[(m.kind, m.priority)].append(seconds)

    def row(kind: str, priority: str, keys: list[tuple[Kind, Priority]]) -> Turnaround:
        return Turnaround(kind, priority, sum(counts.get(k, 0) for k in keys),
                          Spread.of(s for k in keys for s in delivered.get(k, ())),
                          Spread.of(s for k in keys for s in completed.get(k, ())))

    rows: list[Turnaround] = []
    for kind in Kind:
        keys = [(kind, p) for p in Priority if counts.get((kind, p))]
        rows.extend(row(kind.label, p.value, [(kind, p)]) for _, p in keys)
        if len(keys) > 1:
            rows.append(row(kind.label, ALL_PRIORITIES, keys))
    everything = [k for k, n in counts.items() if n]
    if everything:
        rows.append(row(ALL_KINDS, ALL_PRIORITIES, everything))
    return tuple(rows)


def _targets(counts: Mapping[tuple[Kind, Priority, Status], int], milestones: list[_Milestones]) -> tuple[Target, ...]:
    groups = {BLUE_LIGHT_GROUP: lambda k, p: p == Priority.BLUE_LIGHT and k != Kind.TRAUMA,
              TRAUMA_GROUP: lambda k, p: k == Kind.TRAUMA}
    rows = []
    for name, member in groups.items():
        submitted = sum(n for (k, p, _s), n in counts.items() if member(k, p))
        ended = sum(n for (k, p, s), n in counts.items() if member(k, p) and s in (S.CANCELLED, S.DECLINED))
        took = [m.delivered - m.created for m in milestones if m.delivered is not None and member(m.kind, m.priority)]
        limit = FOUR_HOURS.total_seconds()
        rows.append(Target(name, submitted, ended, sum(1 for t in took if t <= limit),
                           sum(1 for t in took if t > limit)))
    return tuple(rows)


def _awaiting(cohort: sa.ColumnElement[bool], submitted: Mapping[Kind, int], cohort_size: int) -> tuple[Awaiting, ...]:
    """Awaiting Details spells from the status changes into and out of it, in order: each
    request's looked up by a `LATERAL` subquery or all picked by `request_id IN (the
    cohort)`, as `_per_request` decides. The subquery's `OFFSET 0` is PostgreSQL's way of
    keeping it a subquery: without it the planner flattens it into a plain join, which it
    hashes over the whole audit trail as it does the `IN`."""
    event = audit.AuditEvent
    columns = (event.id, event.request_id, event.at, event.detail, event.actor)
    into_or_out = sa.or_(_to(S.AWAITING_DETAILS), event.detail.like(f"% {S.AWAITING_DETAILS.value} -> %"))
    changes: sa.FromClause
    if _per_request(cohort_size):
        changes = (sa.select(*columns).where(event.request_id == Request.id, _status_changes(), into_or_out)
                   .offset(0)
                   .lateral("changes"))
        joined = sa.join(Request, changes, sa.true())
    else:
        changes = (sa.select(*columns)
                   .where(event.request_id.in_(sa.select(Request.id).where(cohort)), _status_changes(), into_or_out)
                   .subquery("changes"))
        joined = sa.join(Request, changes, Request.id == changes.c.request_id)
    rows = _core(
        sa.select(changes.c.request_id, Request.kind, epoch(changes.c.at), changes.c.detail, changes.c.actor)
        .select_from(joined)
        .where(cohort)
        .order_by(changes.c.request_id, changes.c.at, changes.c.id)
    )
    entered: dict[Kind, set[int]] = defaultdict(set)
    spells: Counter[Kind] = Counter()
    waiting: Counter[Kind] = Counter()
    cancelled: dict[Kind, set[int]] = defaultdict(set)
    durations: dict[Kind, list[float]] = defaultdict(list)
    open_since: dict[int, int] = {}
    kinds: dict[int, Kind] = {}
    for request_id, kind, at, detail, actor in rows:
        kinds[request_id] = kind
        if detail.endswith(f"-> {S.AWAITING_DETAILS.value}"):
            entered[kind].add(request_id)
            spells[kind] += 1
            open_since[request_id] = at
            continue
        started = open_since.pop(request_id, None)
        if started is not None:
            durations[kind].append(float(at - started))
        if actor == audit.SYSTEM_AUTO_CANCEL and detail.endswith(f"-> {S.CANCELLED.value}"):
            cancelled[kind].add(request_id)
    for request_id in open_since:
        waiting[kinds[request_id]] += 1

    def row(label: str, of: list[Kind]) -> Awaiting:
        return Awaiting(label, sum(submitted.get(k, 0) for k in of), sum(len(entered[k]) for k in of),
                        sum(spells[k] for k in of), sum(waiting[k] for k in of),
                        Spread.of(s for k in of for s in durations[k]), sum(len(cancelled[k]) for k in of))

    return (*(row(k.label, [k]) for k in Kind if submitted.get(k)), row(ALL_KINDS, list(Kind)))


def _declines(cohort: sa.ColumnElement[bool]) -> tuple[Decline, ...]:
    rows = db.session.execute(
        sa.select(Request.decline_reason, Request.status, sa.func.count())
        .where(cohort, Request.decline_reason != "")
        .group_by(Request.decline_reason, Request.status)
    )
    declined: Counter[str] = Counter()
    reprocessed: Counter[str] = Counter()
    for reason, status, count in rows:
        declined[reason] += count
        if status not in (S.DECLINED, S.CANCELLED):
            reprocessed[reason] += count
    order = [*DECLINE_REASONS, *sorted(set(declined) - set(DECLINE_REASONS))]
    return tuple(Decline(DECLINE_REASONS.get(code, code), declined[code], reprocessed[code])
                 for code in order if declined[code])


def _transfers(start: datetime, end: datetime) -> tuple[tuple[Transfers, ...], tuple[Count, ...]]:
    """Transfers started in the period, per direction; failures by reason."""
    transfer, event = Transfer, audit.AuditEvent
    in_period = sa.and_(transfer.created_at >= start, transfer.created_at < end)
    # An analyst's Retry resets `attempts` and is audited as "<call ref> transfer <id> retry".
    retried_by_hand = (
        sa.exists().where(event.action == audit.Action.TRANSFER.value, event.request_id == transfer.request_id,
                          event.detail.like(sa.literal("% transfer ") + sa.cast(transfer.id, sa.String) + " retry"))
    )

    def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    rows = db.session.execute(
        sa.select(transfer.direction, sa.func.count(),
                  count_if(transfer.state == TransferState.DELIVERED),
                  count_if(transfer.state == TransferState.FAILED),
                  count_if(transfer.state == TransferState.CANCELLED),
                  count_if(sa.or_(transfer.attempts > 1, retried_by_hand)),
                  count_if(transfer.partial_ok.is_(True)),
                  sa.func.coalesce(sa.func.sum(transfer.bytes_done), 0))
        .where(in_period)
        .group_by(transfer.direction)
    )
    found = {direction: [int(v) for v in values] for direction, *values in rows}

    def row(label: str, of: list[Direction]) -> Transfers:
        sums = [sum(found.get(d, [0] * 7)[i] for d in of) for i in range(7)]
        started, delivered, failed, cancelled, retried, partial, moved = sums
        return Transfers(label, started, delivered, failed, cancelled, started - delivered - failed - cancelled,
                         retried, partial, moved)

    per_direction = tuple(row(label, [d]) for d, label in DIRECTIONS.items() if d in found)
    errors = db.session.scalars(sa.select(transfer.last_error).where(in_period,
                                                                     transfer.state == TransferState.FAILED))
    reasons = Counter(failure_reason(e or "") for e in errors)
    order = [label for label, _ in FAILURE_REASONS] + [OTHER_FAILURE]
    failures = tuple(Count(label, reasons[label]) for label in order if reasons[label])
    return (*per_direction, row("All directions", list(Direction))), failures


def _cds(cohort: sa.ColumnElement[bool], milestones: list[_Milestones]) -> tuple[CdSite, ...]:
    rows = db.session.execute(
        sa.select(Request.drop_off_site, sa.func.count(), sa.func.coalesce(sa.func.sum(Request.cd_count), 0))
        .where(cohort, Request.kind == Kind.CD)
        .group_by(Request.drop_off_site)
    )
    counted = {site or "": (int(n), int(cds)) for site, n, cds in rows}
    delivered: dict[str, list[float]] = defaultdict(list)
    reached: Counter[str] = Counter()
    for m in milestones:
        if m.kind != Kind.CD or m.delivered is None:
            continue
        reached[m.site or ""] += 1
        if m.handed_in is not None and m.handed_in <= m.delivered:
            delivered[m.site].append(float(m.delivered - m.handed_in))
    sites = [*(s for s in DROP_OFF_SITES if s in counted), *sorted(set(counted) - set(DROP_OFF_SITES))]

    def row(site: str, name: str, of: list[str]) -> CdSite:
        return CdSite(site, name, sum(counted[s][0] for s in of), sum(counted[s][1] for s in of),
                      sum(reached[s] for s in of), Spread.of(x for s in of for x in delivered[s]))

    per_site = [row(s or "(none)", DROP_OFF_SITES.get(s, "Not a drop-off site of the desk"), [s]) for s in sites]
    return (*per_site, row("All sites", "", sites)) if per_site else ()


def _opening_windows(period: Period) -> list[tuple[datetime, datetime]]:
    """The service desk's open windows in the period (app/workflow/hours.py: one a day,
    none on a bank holiday), in UTC: SQLite compares the stored text, which is UTC."""
    windows = []
    day = period.first_day
    while day < period.next_first_day:
        window = hours.opening_hours(day)
        if window is not None:
            windows.append((window[0].astimezone(UTC), window[1].astimezone(UTC)))
        day += timedelta(days=1)
    return windows


def _out_of_hours(submitted: Mapping[Kind, int], period: Period) -> tuple[OutOfHours, ...]:
    """Submissions outside the service desk's hours (guideline 2.9), per kind: those not in
    one of the period's open windows (opening inclusive, closing not, as hours.is_open).
    London's clocks and the bank holidays are not SQLite's to know, so the windows are
    computed here and handed to the database as a VALUES list, which counts the requests
    in each (an index range a window) without sending a row back."""
    in_hours: Counter[Kind] = Counter()
    windows = _opening_windows(period)
    if windows:
        opens = sa.column("opens", sa.DateTime(timezone=True))
        closes = sa.column("closes", sa.DateTime(timezone=True))
        table = sa.values(opens, closes, name="windows").data(windows).cte("windows")
        rows = db.session.execute(
            sa.select(Request.kind, sa.func.count())
            .select_from(table)
            .join(Request, sa.and_(Request.created_at >= table.c.opens, Request.created_at < table.c.closes))
            .group_by(Request.kind)
        )
        in_hours.update({kind: int(n) for kind, n in rows})
    kinds = [k for k in Kind if submitted.get(k)]
    rows_out = [OutOfHours(k.label, submitted[k], submitted[k] - in_hours[k]) for k in kinds]
    total = sum(submitted.values())
    return (*rows_out, OutOfHours(ALL_KINDS, total, total - sum(in_hours.values())))


def build_report(period: Period, now: datetime | None = None) -> Report:
    """Every figure of the report for `period` (a handful of queries, none per row)."""
    now = now or local_now()
    start, end = period.bounds()
    cohort = sa.and_(Request.created_at >= start, Request.created_at < end)
    grouped = db.session.execute(
        sa.select(Request.kind, Request.priority, Request.status, sa.func.count())
        .where(cohort).group_by(Request.kind, Request.priority, Request.status)
    ).all()
    counts = {(kind, priority, status): int(n) for kind, priority, status, n in grouped}
    by_kp: Counter[tuple[Kind, Priority]] = Counter()
    by_kind: Counter[Kind] = Counter()
    by_status: Counter[tuple[Status, Kind]] = Counter()
    for (kind, priority, status), n in counts.items():
        by_kp[(kind, priority)] += n
        by_kind[kind] += n
        by_status[(status, kind)] += n
    total = sum(counts.values())
    statuses = tuple(s for s in Status if any(by_status[(s, k)] for k in Kind))
    milestones = _milestones(cohort, total) if total else []
    transfers, failures = _transfers(start, end)
    notes = []
    in_progress = period.in_progress(aware(now).astimezone(LONDON).date())
    if in_progress:
        notes.append(f"{period.label} is not over yet: the figures are those up to now.")
    return Report(
        period=period,
        generated_at=aware(now).astimezone(LONDON),
        in_progress=in_progress,
        requests=total,
        by_kind=tuple(Count(k.label, by_kind[k]) for k in Kind),
        by_priority=tuple(Count(p.value, sum(by_kp[(k, p)] for k in Kind)) for p in Priority),
        kind_priority=Table(tuple(k.label for k in Kind), tuple(p.value for p in Priority),
                            tuple(tuple(by_kp[(k, p)] for p in Priority) for k in Kind)),
        status_kind=Table(tuple(s.value for s in statuses), tuple(k.label for k in Kind),
                          tuple(tuple(by_status[(s, k)] for k in Kind) for s in statuses)),
        out_of_hours=_out_of_hours(by_kind, period) if total else (),
        turnaround=_turnaround(by_kp, milestones),
        targets=_targets(counts, milestones),
        awaiting=_awaiting(cohort, by_kind, total) if total else (),
        declines=_declines(cohort) if total else (),
        transfers=transfers,
        failures=failures,
        cds=_cds(cohort, milestones) if total else (),
        notes=tuple(notes),
        desk_staff=_desk_staff(),
        untrained=tuple(user.name for user in untrained_desk_staff()),
    )


def _desk_staff() -> int:
    """Active users with a desk role (the ones the training register is about)."""
    return db.session.scalar(
        sa.select(sa.func.count()).select_from(User).where(User.active, User.role.in_(TRAINED_ROLES))) or 0


# --- Duration words -----------------------------------------------------------------------------


def duration_words(seconds: float | None) -> str:
    """A duration as people read it: "—", "45 min", "3 h 05 min", "2 d 4 h"."""
    if seconds is None:
        return "—"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours_, minutes = divmod(minutes, 60)
    if hours_ < 48:
        return f"{hours_} h {minutes:02d} min"
    days, hours_ = divmod(hours_, 24)
    return f"{days} d {hours_} h"


def hours_figure(seconds: float | None) -> str:
    """A duration in hours with two decimals, for the CSV ("" when there is none)."""
    return "" if seconds is None else f"{seconds / 3600:.2f}"

