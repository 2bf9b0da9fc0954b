"""Compliance reports (issue 14.6; guideline section 4).

The figures are checked against a generated history (tests/report_history.py): requests
that go through their statuses by `machine.transition` at frozen moments, transfers, CDs.
What the report should say is computed here from the generated plan alone, in plain
Python, never by calling the report's own functions; the desk's working-hours rule
(`hours.is_open`) is the one thing shared, since the report must agree with it.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
import statistics
from collections import Counter
from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa
from pypdf import PdfReader

from app.admin import report_figures as figures
from app.admin.report_charts import charts
from app.admin.report_figures import Period, PeriodError, build_report, failure_reason, parse_period
from app.dicom.errors import AssociationOutcome, to_failure
from app.extensions import db
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import local_today
from app.transfers.models import Direction, TransferState
from app.workflow import hours
from tests.report_history import AUTO, FAILURES, Planned, PlannedTransfer, plan_history, utc, write

S = Status
FOUR_HOURS = timedelta(hours=4)
MINUTE = timedelta(minutes=1)
MARCH = Period("month", 2026, 3)
# London: GMT until 29 March 2026 01:00 UTC, then BST (UTC+1).
MARCH_START, MARCH_END = utc(2026, 3, 1, 0, 0), utc(2026, 3, 31, 23, 0)
LABEL = {Kind.IMPORT: "Import", Kind.EXPORT: "Export", Kind.CD: "CD import", Kind.TRAUMA: "Trauma transfer"}


# --- What the plan says, in plain Python ----------------------------------------------------------


def p90(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def whole(moment: datetime) -> int:
    """A moment to the second, as the report measures (truncated, seconds since 1970)."""
    return math.floor(moment.timestamp())


def seconds(later: datetime | None, earlier: datetime) -> float | None:
    return None if later is None else float(whole(later) - whole(earlier))


def spread(values: list[float]) -> tuple[int, float | None, float | None]:
    return len(values), med(values), p90(values)


def as_tuple(s: figures.Spread) -> tuple[int, float | None, float | None]:
    return s.count, s.median, s.p90


def approx(value: tuple[int, float | None, float | None]) -> tuple[object, ...]:
    """The spread as expected, its durations to a microsecond (None stays None)."""
    return tuple(v if v is None else pytest.approx(v, rel=1e-12, abs=1e-6) for v in value)


def cohort(plan: list[Planned], start: datetime, end: datetime) -> list[Planned]:
    return [p for p in plan if start <= p.created < end]


@pytest.fixture
def history(app, make_user, pas_patients):
    """About 220 requests from mid-February to mid-April 2026 and 60 transfers, written."""
    rng = random.Random(1406)
    plan, moved = plan_history(rng, utc(2026, 2, 14), utc(2026, 4, 12), 220, transfers=60)
    analyst, requester = make_user("analyst"), make_user("requester")
    write(plan, moved, requester.id, analyst.id, pas_patients[0])
    return plan, moved


def test_the_report_matches_a_generated_history(history):
    plan, moved = history
    report = build_report(MARCH, now=utc(2026, 12, 1))
    mine = cohort(plan, MARCH_START, MARCH_END)
    assert 60 < len(mine) < len(plan), "the history spreads past both ends of March"

    # Requests by kind, priority and final status.
    assert report.requests == len(mine)
    assert {c.label: c.count for c in report.by_kind} == {LABEL[k]: sum(p.kind == k for p in mine) for k in Kind}
    assert {c.label: c.count for c in report.by_priority} == {
        pr.value: sum(p.priority == pr for p in mine) for pr in Priority}
    table = report.kind_priority
    for kind in Kind:
        for priority in Priority:
            cell = table.cells[table.rows.index(LABEL[kind])][table.columns.index(priority.value)]
            assert cell == sum(p.kind == kind and p.priority == priority for p in mine)
    finals = Counter((p.final, p.kind) for p in mine)
    table = report.status_kind
    assert set(table.rows) == {s.value for s, _ in finals}
    for status, kind in finals:
        assert table.cells[table.rows.index(status.value)][table.columns.index(LABEL[kind])] == finals[(status, kind)]

    # Out-of-hours submissions, by the desk's own rule of hours.
    outside = {LABEL[k]: sum(p.kind == k and not hours.is_open(p.created) for p in mine) for k in Kind}
    got = {o.kind: (o.submitted, o.out_of_hours) for o in report.out_of_hours}
    for kind in Kind:
        if any(p.kind == kind for p in mine):
            assert got[LABEL[kind]] == (sum(p.kind == kind for p in mine), outside[LABEL[kind]])
    assert got["All kinds"] == (len(mine), sum(outside.values()))
    assert 0 < sum(outside.values()) < len(mine)

    # Turnaround: submission to first Delivered and to first Completed, per kind and priority.
    rows = {(t.kind, t.priority): t for t in report.turnaround}
    for kind in Kind:
        for priority in Priority:
            group = [p for p in mine if p.kind == kind and p.priority == priority]
            if not group:
                assert (LABEL[kind], priority.value) not in rows
                continue
            row = rows[(LABEL[kind], priority.value)]
            delivered = [seconds(p.reached(S.DELIVERED), p.created) for p in group if p.reached(S.DELIVERED)]
            completed = [seconds(p.reached(S.COMPLETED), p.created) for p in group if p.reached(S.COMPLETED)]
            assert row.submitted == len(group)
            assert as_tuple(row.delivered) == approx(spread(delivered))
            assert as_tuple(row.completed) == approx(spread(completed))
    everything = rows[("All kinds", "All priorities")]
    delivered = [seconds(p.reached(S.DELIVERED), p.created) for p in mine if p.reached(S.DELIVERED)]
    assert as_tuple(everything.delivered) == approx(spread(delivered))
    assert everything.delivered.count > 20

    # The 4-hour target: Blue Light (not trauma), and trauma transfers.
    groups = {figures.BLUE_LIGHT_GROUP: [p for p in mine
                                         if p.priority == Priority.BLUE_LIGHT and p.kind != Kind.TRAUMA],
              figures.TRAUMA_GROUP: [p for p in mine if p.kind == Kind.TRAUMA]}
    for target in report.targets:
        group = groups[target.group]
        ended = [p for p in group if p.final in (S.CANCELLED, S.DECLINED)]
        took = [seconds(p.reached(S.DELIVERED), p.created) for p in group if p.reached(S.DELIVERED)]
        within = sum(t <= FOUR_HOURS.total_seconds() for t in took)
        counted = len(group) - len(ended)
        assert (target.submitted, target.cancelled_or_declined, target.within, target.later) == (
            len(group), len(ended), within, len(took) - within)
        assert target.share == (within / counted if counted else None)
    assert all(t.submitted for t in report.targets)

    # Awaiting Details: requests, spells, still waiting, spell lengths, auto-cancelled.
    awaiting = {a.kind: a for a in report.awaiting}
    for label, group in [*((LABEL[k], [p for p in mine if p.kind == k]) for k in Kind), ("All kinds", mine)]:
        if not group:
            continue
        spells, lengths, waiting = 0, [], 0
        for p in group:
            since = None
            for step in p.steps:
                if step.status == S.AWAITING_DETAILS:
                    spells += 1
                    since = step.at
                elif since is not None:
                    lengths.append(seconds(step.at, since))
                    since = None
            waiting += since is not None
        row = awaiting[label]
        assert row.requests == sum(any(s.status == S.AWAITING_DETAILS for s in p.steps) for p in group)
        assert (row.spells, row.still_waiting) == (spells, waiting)
        assert as_tuple(row.spell) == approx(spread(lengths))
        assert row.auto_cancelled == sum(any(s.by == AUTO for s in p.steps) for p in group)
    assert awaiting["All kinds"].auto_cancelled > 0
    assert awaiting["All kinds"].spells > awaiting["All kinds"].requests, "some went back a second time"
    # Cancelled by a person from Awaiting Details is not the 14-day rule.
    assert any(p.final == S.CANCELLED and len(p.steps) >= 2 and p.steps[-2].status == S.AWAITING_DETAILS
               and p.steps[-1].by != AUTO for p in mine)

    # Declines by reason (guideline 2.5), and re-processed.
    declined = Counter(p.decline_reason for p in mine if p.decline_reason)
    again = Counter(p.decline_reason for p in mine if p.decline_reason and p.final not in (S.DECLINED, S.CANCELLED))
    from app.workflow.machine import DECLINE_REASONS
    assert {d.reason: (d.declined, d.reprocessed) for d in report.declines} == {
        DECLINE_REASONS[r]: (n, again[r]) for r, n in declined.items()}
    assert sum(again.values()) > 0

    # CDs per drop-off site, and drop-off (first Collected or Uploaded) to Delivered.
    cds = {c.site: c for c in report.cds}
    for site in ("LRI", "GH", "LGH"):
        group = [p for p in mine if p.kind == Kind.CD and p.site == site]
        if not group:
            assert site not in cds
            continue
        row = cds[site]
        waits = [seconds(p.reached(S.DELIVERED), p.reached(S.COLLECTED, S.UPLOADED)) for p in group
                 if p.reached(S.DELIVERED)]
        assert (row.requests, row.cds, row.delivered) == (
            len(group), sum(p.cd_count for p in group), sum(1 for p in group if p.reached(S.DELIVERED)))
        assert as_tuple(row.to_pacs) == approx(spread(waits))
    all_cds = [p for p in mine if p.kind == Kind.CD]
    assert (cds["All sites"].requests, cds["All sites"].cds) == (len(all_cds), sum(p.cd_count for p in all_cds))

    # Transfers started in March: per direction, failures by reason, MB moved.
    started = [t for t in moved if MARCH_START <= t.created < MARCH_END]
    expected_retried = [t for t in started if t.attempts > 1 or (t.retried_by_hand and t.request_index is not None)]
    transfers = {t.direction: t for t in report.transfers}
    for direction, label in figures.DIRECTIONS.items():
        group = [t for t in started if t.direction == direction]
        if not group:
            assert label not in transfers
            continue
        row = transfers[label]
        by_state = Counter(t.state for t in group)
        assert (row.started, row.delivered, row.failed, row.cancelled) == (
            len(group), by_state[TransferState.DELIVERED], by_state[TransferState.FAILED],
            by_state[TransferState.CANCELLED])
        assert row.retried == sum(t in expected_retried for t in group)
        assert row.partial == sum(t.partial for t in group)
        assert row.bytes_moved == sum(t.bytes_done for t in group)
    total = transfers["All directions"]
    assert total.started == len(started)
    assert total.mb_moved == pytest.approx(sum(t.bytes_done for t in started) / 1048576)
    reason_of = dict(FAILURES)
    assert {f.label: f.count for f in report.failures} == dict(
        Counter(reason_of[t.last_error] for t in started if t.state == TransferState.FAILED))
    assert total.retried > 0 and total.partial > 0

    # A year and a half-year are the same rules over a longer span.
    half = build_report(Period("half", 2026, 1), now=utc(2026, 12, 1))
    assert half.requests == len(plan)
    assert {c.label: c.count for c in half.by_kind} == {LABEL[k]: sum(p.kind == k for p in plan) for k in Kind}


def test_a_request_belongs_to_the_month_of_londons_calendar(app, make_user, pas_patients):
    """23:30 on the last day of a month belongs to that month, in BST as in GMT; 00:30 on
    the first day belongs to the new month even when it is still the old one in UTC."""
    late_march = utc(2026, 3, 31, 22, 30)  # 23:30 BST, 31 March
    early_april = utc(2026, 3, 31, 23, 30)  # 00:30 BST, 1 April (still 31 March in UTC)
    late_january = utc(2026, 1, 31, 23, 30)  # 23:30 GMT, 31 January
    early_march = utc(2026, 3, 1, 0, 10)  # 00:10 GMT, 1 March
    late_february = utc(2026, 2, 28, 23, 59)
    plan = [Planned(Kind.IMPORT, Priority.STANDARD, at) for at in
            (late_march, early_april, late_january, early_march, late_february)]
    write(plan, [], make_user("requester").id, make_user("analyst").id, pas_patients[0])
    now = utc(2026, 12, 1)
    assert build_report(MARCH, now=now).requests == 2  # 1 March 00:10 and 31 March 23:30
    assert build_report(Period("month", 2026, 4), now=now).requests == 1
    assert build_report(Period("month", 2026, 1), now=now).requests == 1
    assert build_report(Period("month", 2026, 2), now=now).requests == 1
    assert MARCH.bounds() == (utc(2026, 3, 1), utc(2026, 3, 31, 23))
    assert Period("half", 2026, 2).bounds() == (utc(2026, 6, 30, 23), utc(2027, 1, 1))


def test_out_of_hours_follows_the_desks_hours(app, make_user, pas_patients):
    """Guideline 2.9: weekdays 08:00-17:30, weekends 08:00-20:00, bank holidays closed."""
    moments = {
        utc(2026, 3, 2, 8, 0): False,  # Monday 08:00 GMT: open
        utc(2026, 3, 2, 17, 29): False,
        utc(2026, 3, 2, 17, 30): True,  # closing time
        utc(2026, 3, 7, 19, 59): False,  # Saturday, open until 20:00
        utc(2026, 3, 7, 20, 0): True,
        utc(2026, 3, 31, 7, 30): False,  # 08:30 BST
        utc(2026, 3, 31, 6, 59): True,  # 07:59 BST
        utc(2026, 4, 3, 12, 0): True,  # Good Friday
    }
    plan = [Planned(Kind.EXPORT, Priority.STANDARD, at) for at in moments]
    write(plan, [], make_user("requester").id, make_user("analyst").id, pas_patients[0])
    report = build_report(Period("half", 2026, 1), now=utc(2026, 12, 1))
    assert report.out_of_hours[-1].out_of_hours == sum(moments.values()) == 4


def test_four_hours_to_the_second_is_within_the_target(app, make_user, pas_patients):
    from tests.report_history import Step

    created = utc(2026, 3, 3, 2, 0, 0)
    plan = []
    for took in (timedelta(hours=4), timedelta(hours=4, seconds=1), timedelta(minutes=50)):
        plan.append(Planned(Kind.TRAUMA, Priority.BLUE_LIGHT, created, steps=[
            Step(S.ACCEPTED, created + timedelta(minutes=1)), Step(S.UPLOADING, created + timedelta(minutes=2)),
            Step(S.DELIVERED, created + took)]))
    plan.append(Planned(Kind.TRAUMA, Priority.BLUE_LIGHT, created, steps=[Step(S.CANCELLED, created + MINUTE)]))
    plan.append(Planned(Kind.TRAUMA, Priority.BLUE_LIGHT, created))  # not delivered yet: counted, a miss
    write(plan, [], make_user("requester").id, make_user("analyst").id, pas_patients[0])
    trauma = build_report(MARCH, now=utc(2026, 12, 1)).targets[1]
    assert (trauma.submitted, trauma.cancelled_or_declined, trauma.within, trauma.later, trauma.not_delivered) == (
        5, 1, 2, 1, 1)
    assert trauma.share == 0.5


def test_an_empty_period_says_so(client, login_as):
    login_as("admin")
    page = client.get("/admin/reports?period=month&year=2025&month=6")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="report-empty"' in html
    assert "No requests were submitted and no transfers were started in June 2025" in html
    assert "<svg" not in html and "<table" not in html
    pdf = client.get("/admin/reports.pdf?period=month&year=2025&month=6")
    assert pdf.status_code == 200
    assert "nothing to report" in " ".join(_pdf_text(pdf.data))
    rows = list(csv.reader(io.StringIO(client.get("/admin/reports.csv?period=month&year=2025&month=6").text)))
    assert ["2025-06", "Requests", "All", "submitted", "0", "requests"] in rows


def test_the_default_is_the_last_complete_month(client, login_as):
    login_as("admin")
    html = client.get("/admin/reports").get_data(as_text=True)
    today = local_today()
    last = today.replace(day=1) - timedelta(days=1)
    assert f"Image exchange compliance: {figures.MONTHS[last.month - 1]} {last.year}" in html


@pytest.mark.parametrize(("args", "problem"), [
    pytest.param({"period": "week", "year": "2026"}, ("period", "Choose the period"), id="unknown_period_kind"),
    pytest.param({"period": "month", "year": "20x6", "month": "3"}, ("year", "The year must be four digits"),
                 id="year_not_a_number"),
    pytest.param({"period": "year", "year": "1999"}, ("year", "from 2000"), id="year_before_the_desk"),
    pytest.param({"period": "year", "year": "2999"}, ("year", "The year must be"), id="year_in_the_future"),
    pytest.param({"period": "month", "year": "2026", "month": "13"}, ("month", "Choose the month"),
                 id="month_13"),
    pytest.param({"period": "month", "year": "2026"}, ("month", "Choose the month"), id="month_missing"),
    pytest.param({"period": "half", "year": "2026", "half": "3"}, ("half", "Choose the half-year"), id="half_3"),
    pytest.param({"period": "month", "year": "2026", "month": "²"}, ("month", "Choose the month"),
                 id="month_superscript_two"),
])
def test_a_period_that_is_not_one_is_refused_by_name(args, problem):
    with pytest.raises(PeriodError) as refused:
        parse_period(args, date(2026, 12, 6))
    field, words = problem
    assert refused.value.field == field and words in str(refused.value)


def test_periods_parse_and_name_themselves():
    today = date(2026, 3, 1)
    assert parse_period({}, today) == Period("month", 2026, 2)
    assert parse_period({}, date(2026, 1, 15)) == Period("month", 2025, 12)
    assert parse_period({"period": "half", "year": "2025", "half": "2"}, today).label == "July to December 2025"
    assert parse_period({"period": "year", "year": "2025", "month": "7"}, today) == Period("year", 2025)
    current = parse_period({"period": "month", "year": "2026", "month": "3"}, today)
    assert current.in_progress(today) and current.slug == "2026-03"
    with pytest.raises(PeriodError, match="has not started yet"):
        parse_period({"period": "month", "year": "2026", "month": "4"}, today)


def test_bad_period_input_answers_400_with_the_error_and_what_was_typed(client, login_as):
    login_as("admin")
    for url in ("/admin/reports", "/admin/reports.csv", "/admin/reports.pdf"):
        answer = client.get(url, query_string={"period": "month", "year": "20x6", "month": "3"})
        assert answer.status_code == 400 and answer.mimetype == "text/html"
        html = answer.get_data(as_text=True)
        assert 'id="report-year-error"' in html and "The year must be four digits" in html
        assert 'value="20x6"' in html and 'aria-invalid="true"' in html
        assert "Download PDF" not in html


@pytest.mark.parametrize("role", ["requester", "analyst", "am_radiology", "radiologist"])
def test_only_admins_see_reports(client, login_as, role):
    login_as(role)
    for url in ("/admin/reports", "/admin/reports.csv", "/admin/reports.pdf"):
        assert client.get(url).status_code == 403


def _pdf_text(data: bytes) -> list[str]:
    return [re.sub(r"\s+", " ", page.extract_text()) for page in PdfReader(io.BytesIO(data)).pages]


@pytest.fixture
def small_history(app, make_user, pas_patients):
    """Three March requests whose figures are easy to state, and one transfer."""
    created = utc(2026, 3, 10, 9, 0)  # Tuesday, 09:00 GMT
    plan = [
        Planned(Kind.TRAUMA, Priority.BLUE_LIGHT, created, steps=[]),
        Planned(Kind.IMPORT, Priority.STANDARD, created, steps=[]),
        Planned(Kind.CD, Priority.STANDARD, utc(2026, 3, 14, 21, 0), site="GH", cd_count=2),  # Saturday 21:00
    ]
    from tests.report_history import Step
    plan[0].steps = [Step(S.ACCEPTED, created + timedelta(minutes=30)),
                     Step(S.UPLOADING, created + timedelta(hours=1)),
                     Step(S.DELIVERED, created + timedelta(hours=3)),
                     Step(S.COMPLETED, created + timedelta(hours=3, minutes=2))]
    plan[1].steps = [Step(S.DECLINED, created + timedelta(days=1), reason="not_found")]
    plan[2].steps = [Step(S.COLLECTED, utc(2026, 3, 18, 10)), Step(S.UPLOADED, utc(2026, 3, 18, 11)),
                     Step(S.DELIVERED, utc(2026, 3, 18, 16))]
    moved = [PlannedTransfer(Direction.OUTBOUND, TransferState.DELIVERED, created + timedelta(hours=1), 2, False,
                             52_428_800, request_index=0)]
    write(plan, moved, make_user("requester").id, make_user("analyst").id, pas_patients[0])
    return plan


def test_the_csv_holds_every_figure_one_a_line(client, login_as, small_history):
    login_as("admin")
    answer = client.get("/admin/reports.csv?period=month&year=2026&month=3")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="iep-compliance-2026-03.csv"'
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["period", "section", "group", "measure", "value", "unit"]
    for row in (
        ["2026-03", "Requests", "All", "submitted", "3", "requests"],
        ["2026-03", "Requests by kind and priority", "Trauma transfer / Blue Light", "submitted", "1", "requests"],
        ["2026-03", "Requests by final status", "Declined / Import", "requests", "1", "requests"],
        ["2026-03", "Out-of-hours submissions", "All kinds", "outside the desk's hours", "1", "requests"],
        ["2026-03", "Turnaround", "Trauma transfer / Blue Light", "to Delivered: median", "3.00", "hours"],
        ["2026-03", "Turnaround", "Trauma transfer / Blue Light", "to Completed: median", "3.03", "hours"],
        ["2026-03", "4-hour target", figures.TRAUMA_GROUP, "share delivered within 4 hours", "100.0", "percent"],
        ["2026-03", "Declines", "The requested study does not exist at that organisation", "declined", "1",
         "requests"],
        ["2026-03", "Transfers", "Outbound (exports, trauma)", "retried", "1", "transfers"],
        ["2026-03", "Transfers", "All directions", "moved", "50.0", "MB"],
        ["2026-03", "CDs", "GH", "CDs", "2", "CDs"],
        ["2026-03", "CDs", "GH", "drop-off to PACS: median", "6.00", "hours"],
    ):
        assert row in rows, row
    assert all(len(r) == 6 for r in rows)


def test_the_pdf_has_the_headings_the_figures_and_the_charts(client, login_as, small_history):
    login_as("admin")
    answer = client.get("/admin/reports.pdf?period=month&year=2026&month=3")
    assert answer.status_code == 200 and answer.mimetype == "application/pdf"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="iep-compliance-2026-03.pdf"'
    text = " ".join(_pdf_text(answer.data))
    for heading in ("Image exchange compliance: March 2026", "Requests", "Turnaround",
                    "Blue Light and trauma: the 4-hour target", "Awaiting Details and declines", "Transfers", "CDs"):
        assert heading in text, heading
    assert "3 requests submitted" in text
    assert "3 h 00 min" in text  # the trauma transfer's time to Delivered
    # The charts are drawn as vector text in the PDF: their titles and figures are there.
    assert "Requests submitted, by kind" in text and "CDs handed in, per drop-off site" in text
    assert "100 %" in text


def test_the_page_shows_figures_and_inline_charts(client, login_as, small_history):
    login_as("admin")
    answer = client.get("/admin/reports?period=month&year=2026&month=3")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "Image exchange compliance: March 2026" in html
    assert html.count('<figure class="report-chart"') >= 5
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="report-chart-svg"' in html
    # The page's policy allows no inline style or script: the charts carry neither.
    policy = answer.headers["Content-Security-Policy"]
    assert "style-src 'self'" in policy and "unsafe-inline" not in policy
    svg = html[html.index("<svg"):html.rindex("</svg>")]
    assert "<style" not in svg and "<script" not in svg and "style=" not in svg
    assert 'href="/admin/reports.pdf?period=month&amp;year=2026&amp;month=3"' in html


def test_charts_read_in_black_and_white(app, small_history):
    drawn = charts(build_report(MARCH, now=utc(2026, 12, 1)))
    assert {"kinds", "statuses", "turnaround", "targets", "declines", "cds"} <= set(drawn)
    for chart in drawn.values():
        svg = chart.svg
        assert 'role="img"' in svg and f'aria-label="{chart.title}"' in svg
        fills = set(re.findall(r'fill="(#[0-9a-f]{6})"', svg))
        assert fills <= {"#ffffff", "#000000", "#d0d0d0"}, "one grey for every bar, black text"
        assert 'stroke="#000000"' in svg  # bars outlined
        assert 'class="value"' in svg  # each bar carries its figure


def test_the_report_runs_a_fixed_number_of_queries(app, history):
    engine = db.engine
    seen: list[str] = []

    def count(*_args) -> None:  # noqa: ANN002
        seen.append("q")

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        build_report(MARCH, now=utc(2026, 12, 1))
        small = len(seen)
        seen.clear()
        build_report(Period("year", 2026), now=utc(2026, 12, 1))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(seen) == small <= 10


@pytest.mark.parametrize(("outcome", "group"), [
    pytest.param(AssociationOutcome(node="X@10.0.0.1:104", connect_error=ConnectionRefusedError()),
                 "Could not connect", id="connection_refused"),
    pytest.param(AssociationOutcome(node="X@h:104", connected=True, rejected=(1, 1, 7)), "Association rejected",
                 id="called_ae_title_rejected"),
    pytest.param(AssociationOutcome(node="X@h:104", connected=True, rejected=(1, 1, 3), our_ae_title="IEP"),
                 "Association rejected", id="calling_ae_title_unknown"),
    pytest.param(AssociationOutcome(node="X@h:104", connected=True, timed_out=True, timeout_seconds=30),
                 "No answer in time", id="timeout"),
    pytest.param(AssociationOutcome(node="X@h:104", connected=True, abort_received=(2, 0)), "Connection dropped",
                 id="aborted"),
    pytest.param(0xA702, "Refused by the node", id="out_of_resources"),
    pytest.param(0xB000, "Instances missing or refused", id="some_instances_failed"),
])
def test_a_failed_transfer_is_grouped_by_its_reason(outcome, group):
    failure = to_failure(outcome, operation="move")
    assert failure_reason(f"{failure.plain} (gave up after 5 attempts)") == group


def test_the_report_lists_desk_staff_with_no_training_record(client, login_as, make_user):
    """Issue 14.7: "the report lists staff with desk roles and no training record" — the
    compliance report, on screen, in the CSV and in the PDF; active desk roles only."""
    from app.auth.training import TrainingRecord

    untrained, trained, gone = make_user("analyst"), make_user("am_radiology"), make_user("analyst")
    untrained.name, trained.name, gone.name = "Una Trainee", "Tom Trained", "Gail Gone"
    gone.active = False
    make_user("requester")  # not a desk role: never listed
    db.session.add(TrainingRecord(user_id=trained.id, trainer_name="Sam Lead", trained_on=date(2026, 1, 5),
                                  topic="IEP desk induction"))
    db.session.commit()
    login_as("admin")
    url = "?period=month&year=2026&month=3"
    html = client.get("/admin/reports" + url).get_data(as_text=True)
    section = " ".join(html[html.index('id="report-training"'):].split())
    assert "2 active people hold a desk role" in section and "1 of them has no training record" in section
    assert "Una Trainee" in section and "Tom Trained" not in section and "Gail Gone" not in section
    rows = list(csv.reader(io.StringIO(client.get("/admin/reports.csv" + url).text)))
    assert ["2026-03", "Training", "Desk roles", "with no training record", "1", "people"] in rows
    assert ["2026-03", "Training", "No training record", "Una Trainee", "", "person"] in rows
    assert "Una Trainee" in " ".join(_pdf_text(client.get("/admin/reports.pdf" + url).data))


# --- How the audit trail is read (bench/README.md, reports) -------------------------------------


def _audit_reads(period: Period) -> list[tuple[str, object]]:
    """The statements of the period's report that read the status changes."""
    seen: list[tuple[str, object]] = []

    def before(_conn, _cursor, statement, parameters, *_args) -> None:  # noqa: ANN001
        if "FROM audit_events" in statement and "status_change" in str(parameters) + statement:
            seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", before)
    try:
        build_report(period, now=utc(2026, 12, 1))
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", before)
    return seen


def test_both_ways_of_reading_the_trail_give_the_same_report(history, monkeypatch):
    """A small cohort's status changes are looked up request by request on PostgreSQL, a
    large one's in one pass (`_per_request`): the figures must not depend on which."""
    by_request = [build_report(p, now=utc(2026, 12, 1)) for p in (MARCH, Period("year", 2026))]
    monkeypatch.setattr(figures, "PER_REQUEST_LIMIT", 0)
    in_one_pass = [build_report(p, now=utc(2026, 12, 1)) for p in (MARCH, Period("year", 2026))]
    assert by_request == in_one_pass
    assert by_request[0].turnaround and by_request[0].awaiting[-1].spells


def test_a_months_report_looks_its_requests_up_in_the_audit_trail(history):
    """On PostgreSQL a month's status changes are read through the (request_id, action)
    index once per request of the month, never by scanning the audit trail, whatever the
    planner would make of the whole trail (the 100,000-request bench: 160-250 ms -> 24 ms);
    SQLite reads them through the index for any period."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE audit_events, requests")  # the planner sees the history
    reads = _audit_reads(MARCH)
    assert len(reads) == 2  # the first Delivered, Completed, drop-off; the Awaiting Details spells
    for statement, parameters in reads:
        with db.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert "Seq Scan on audit_events" not in plan, plan
                assert re.search(r"Index Cond: \(\(?request_id = requests\.id\)", plan), plan
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                plan = "\n".join(str(r[-1]) for r in rows)
                assert not re.search(r"SCAN audit_events\b", plan), plan
                searched = r"SEARCH audit_events USING INDEX ix_audit_events_request_\w+ \(request_id=\?"
                assert re.search(searched, plan), plan
