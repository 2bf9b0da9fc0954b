"""Compliance reports (guideline section 4; issue 14.6): on screen, as CSV, as a PDF.

Section 4 has the MBP application lead report compliance twice a year in the IM&T
newsletter and the AM lead once a year to Imaging Ops: so a month, a half-year or a
year, chosen with a plain GET form (nothing changes, so no CSRF and no audit row; the
report holds counts and durations, never a patient). Admins only.

URL rules:
    GET /admin/reports        admin.reports       ?period=month|half|year&year=YYYY&month=1-12&half=1|2
    GET /admin/reports.csv    admin.reports_csv   (the same arguments)
    GET /admin/reports.pdf    admin.reports_pdf   (the same arguments)

A period that is not one answers 400 with the page and the error beside the control
that is wrong, the choices kept as they were typed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from flask import Response, render_template, request

from app.admin import bp
from app.admin.report_charts import charts
from app.admin.report_figures import (
    HALVES,
    MONTHS,
    PERIOD_KINDS,
    Period,
    PeriodError,
    Report,
    Spread,
    build_report,
    duration_words,
    hours_figure,
    last_complete_month,
    parse_period,
)
from app.auth.guard import roles_required
from app.auth.models import Role
from app.printing.render import render_pdf
from app.timeutil import local_today

PARAMETERS = ("period", "year", "month", "half")
TEXT_MAX = 20  # a typed value shown back is cut to this (the choices are short words and numbers)


def _choices(period: Period | None) -> dict[str, str]:
    """What the form shows chosen: as asked (cut short), else the period's own values."""
    if period is not None:
        shown = period.query()
        return {"period": shown["period"], "year": shown["year"], "month": shown.get("month", ""),
                "half": shown.get("half", "")}
    return {name: (request.args.get(name) or "")[:TEXT_MAX] for name in PARAMETERS}


def _asked() -> tuple[Period | None, PeriodError | None]:
    try:
        return parse_period(request.args, local_today()), None
    except PeriodError as error:
        return None, error


def _page(period: Period | None, error: PeriodError | None, report: Report | None) -> Response:
    today = local_today()
    default = last_complete_month(today)
    html = render_template(
        "admin/reports.html", report=report, charts=charts(report) if report else {}, error=error,
        chosen=_choices(period) if error is None else _choices(None), kinds=PERIOD_KINDS, months=MONTHS,
        halves=HALVES, years=list(range(today.year, today.year - 11, -1)), default=default,
        duration=duration_words,
    )
    return Response(html, status=400 if error else 200)


@bp.route("/reports")
@roles_required(Role.ADMIN)
def reports() -> Response:
    """The compliance report for a period (default: the last complete month)."""
    period, error = _asked()
    return _page(period, error, build_report(period) if period else None)


@bp.route("/reports.csv")
@roles_required(Role.ADMIN)
def reports_csv() -> Response:
    """The report's figures as CSV: one figure a line (period, section, group, measure, value, unit)."""
    period, error = _asked()
    if period is None:
        return _page(None, error, None)
    report = build_report(period)
    response = Response("".join(csv_lines(report)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="iep-compliance-{period.slug}.csv"'
    return response


@bp.route("/reports.pdf")
@roles_required(Role.ADMIN)
def reports_pdf() -> Response:
    """The report as a PDF for the IM&T newsletter, its charts drawn in."""
    period, error = _asked()
    if period is None:
        return _page(None, error, None)
    report = build_report(period)
    pdf = render_pdf("pdf/compliance_report.html", report=report, charts=charts(report), duration=duration_words)
    response = Response(pdf, mimetype="application/pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="iep-compliance-{period.slug}.pdf"'
    # As for the other PDFs (app/printing/routes.py): Chrome's viewer needs object-src.
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return response


# --- CSV ----------------------------------------------------------------------------------------

HEADER = ("period", "section", "group", "measure", "value", "unit")


def _safe(text: str) -> str:
    """A cell a spreadsheet will not run as a formula (a site or reason as stored)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _spread(section: str, group: str, what: str, spread: Spread) -> Iterator[tuple[str, str, str, object, str]]:
    yield section, group, f"{what}: count", spread.count, "requests"
    yield section, group, f"{what}: median", hours_figure(spread.median), "hours"
    yield section, group, f"{what}: 90th percentile", hours_figure(spread.p90), "hours"


def _figures(report: Report) -> Iterator[tuple[str, str, str, object, str]]:
    """(section, group, measure, value, unit) for every figure of the report."""
    yield "Requests", "All", "submitted", report.requests, "requests"
    table = report.kind_priority
    for r, kind in enumerate(table.rows):
        for col, priority in enumerate(table.columns):
            yield "Requests by kind and priority", f"{kind} / {priority}", "submitted", table.cells[r][col], "requests"
    table = report.status_kind
    for r, status in enumerate(table.rows):
        for col, kind in enumerate(table.columns):
            yield "Requests by final status", f"{status} / {kind}", "requests", table.cells[r][col], "requests"
    for row in report.out_of_hours:
        yield "Out-of-hours submissions", row.kind, "submitted", row.submitted, "requests"
        yield "Out-of-hours submissions", row.kind, "outside the desk's hours", row.out_of_hours, "requests"
    for turn in report.turnaround:
        group = f"{turn.kind} / {turn.priority}"
        yield "Turnaround", group, "submitted", turn.submitted, "requests"
        yield from _spread("Turnaround", group, "to Delivered", turn.delivered)
        yield from _spread("Turnaround", group, "to Completed", turn.completed)
    for g in report.targets:
        yield "4-hour target", g.group, "submitted", g.submitted, "requests"
        yield "4-hour target", g.group, "cancelled or declined (not counted)", g.cancelled_or_declined, "requests"
        yield "4-hour target", g.group, "delivered within 4 hours", g.within, "requests"
        yield "4-hour target", g.group, "delivered later", g.later, "requests"
        yield "4-hour target", g.group, "not delivered", g.not_delivered, "requests"
        yield ("4-hour target", g.group, "share delivered within 4 hours",
               "" if g.share is None else f"{100 * g.share:.1f}", "percent")
    for a in report.awaiting:
        yield "Awaiting Details", a.kind, "requests that went to Awaiting Details", a.requests, "requests"
        yield "Awaiting Details", a.kind, "times", a.spells, "times"
        yield "Awaiting Details", a.kind, "still waiting", a.still_waiting, "requests"
        yield "Awaiting Details", a.kind, "spell: count", a.spell.count, "times"
        yield "Awaiting Details", a.kind, "spell: median", hours_figure(a.spell.median), "hours"
        yield "Awaiting Details", a.kind, "spell: 90th percentile", hours_figure(a.spell.p90), "hours"
        yield "Awaiting Details", a.kind, "auto-cancelled after 14 days", a.auto_cancelled, "requests"
    for d in report.declines:
        yield "Declines", _safe(d.reason), "declined", d.declined, "requests"
        yield "Declines", _safe(d.reason), "re-processed", d.reprocessed, "requests"
    for t in report.transfers:
        for measure, value in (("started", t.started), ("delivered", t.delivered), ("failed", t.failed),
                               ("cancelled", t.cancelled), ("in progress", t.in_progress), ("retried", t.retried),
                               ("partial", t.partial)):
            yield "Transfers", t.direction, measure, value, "transfers"
        yield "Transfers", t.direction, "moved", f"{t.mb_moved:.1f}", "MB"
    for f in report.failures:
        yield "Transfer failures", _safe(f.label), "failed", f.count, "transfers"
    for c in report.cds:
        yield "CDs", _safe(c.site), "CD imports", c.requests, "requests"
        yield "CDs", _safe(c.site), "CDs", c.cds, "CDs"
        yield "CDs", _safe(c.site), "delivered to PACS", c.delivered, "requests"
        yield from _spread("CDs", _safe(c.site), "drop-off to PACS", c.to_pacs)
    yield "Training", "Desk roles", "active staff", report.desk_staff, "people"
    yield "Training", "Desk roles", "with no training record", len(report.untrained), "people"
    for name in report.untrained:
        yield "Training", "No training record", _safe(name), "", "person"


def csv_lines(report: Report) -> Iterator[str]:
    """The CSV, line by line (RFC 4180: CRLF, quoted where needed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    for row in _figures(report):
        writer.writerow((report.period.slug, *row))
    yield buffer.getvalue()
