"""The CD round (Appendix 5; issue 12.5): the collection page and the collection chart.

The collection page takes what a barcode scanner types (the label's QR code holds the
call reference, app/printing/routes.py) or what a person types, and marks that CD import
Collected. The chart lists, per Radiology Reception, the CD imports to collect on a
collection day, as a page and a PDF. Desk roles only.

URL rules:
    GET/POST /desk/cds/collect     collection.collect
    GET      /desk/cds/chart       collection.chart       ?site=LRI&date=YYYY-MM-DD
    GET      /desk/cds/chart.pdf   collection.chart_pdf   (the same arguments)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from flask import Blueprint, Response, render_template, request, session
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional

from app import audit, htmx
from app.auth.guard import roles_required
from app.auth.models import DESK_ROLES
from app.cds.chart import (
    BLANK_ROWS,
    ChartRow,
    ChartSection,
    Done,
    chart,
    collected_between,
    day_bounds,
    default_collection_date,
    last_done,
)
from app.extensions import db
from app.printing.collections import DROP_OFF_SITES
from app.printing.render import render_pdf
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.timeutil import local_now, local_today
from app.workflow.machine import ALLOWED, TransitionRefused, transition

bp = Blueprint("collection", __name__)

DESK = tuple(DESK_ROLES)
SITE_KEY = "cd_collect_site"  # session: the reception being collected from, kept across scans
CODE_MAX = 60  # a call reference is 15 characters; room for a scanner's prefix or suffix
CALL_REF = re.compile(r"IEP-\d{4}-\d{6}")


class CollectForm(FlaskForm):
    """One field a barcode scanner types into, and the reception being collected from."""

    code = StringField("Call reference (scan the CD label's code, or type it)",
                       validators=[Optional(), Length(max=CODE_MAX)])
    site = SelectField("Collecting from", choices=[SelectChoice(k, f"{k} – {v}") for k, v in DROP_OFF_SITES.items()],
                       validate_choice=False)


@dataclass(frozen=True)
class Outcome:
    """What one scan did: a success or a refusal, and a warning beside a success."""

    ok: bool
    message: str
    warning: str = ""


def normalise_code(typed: str) -> str:
    """The call reference in what was typed or scanned: trimmed (a scanner ends with Enter,
    some with Tab), upper case; a call reference inside a longer scan is picked out."""
    text = typed.strip().upper()
    found = CALL_REF.search(text)
    return found.group(0) if found else text


def _when(done: Done) -> str:
    return f"{done.at:%d/%m/%Y} at {done.at:%H:%M} by {done.by}"


def _already(req: Request) -> str:
    """Why a CD already past collection cannot be collected again: when, and by whom."""
    if req.status == Status.COLLECTED:
        done = last_done([req.id], audit.Action.CD_COLLECTED).get(req.id)
        return (f"{req.call_ref} was already collected" + (f" on {_when(done)}" if done else "")
                + ". Nothing was changed.")
    done = last_done([req.id], audit.Action.STATUS_CHANGE, f"-> {Status.UPLOADED.value}").get(req.id)
    return (f"{req.call_ref} is already uploaded" + (f" (on {_when(done)})" if done else "")
            + ": its CD was collected before. Nothing was changed.")


def collect_cd(code: str, site: str) -> Outcome:
    """Mark the CD import `code` names as Collected by the signed-in user, from `site`.
    Commits on success; on a refusal changes nothing."""
    call_ref = normalise_code(code)
    if not call_ref:
        return Outcome(False, "Scan a CD label's code or type its call reference (e.g. IEP-2026-000123).")
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref)) if CALL_REF.fullmatch(
        call_ref) else None
    if req is None:
        return Outcome(False, f"No request has the call reference {call_ref}. Check the label and scan again, "
                              "or type the reference as IEP-YYYY-NNNNNN.")
    if req.kind != Kind.CD:
        return Outcome(False, f"{req.call_ref} is not a CD import ({req.kind.label}): there is no CD to collect.")
    if req.status in (Status.COLLECTED, Status.UPLOADED):
        return Outcome(False, _already(req))
    if Status.COLLECTED not in ALLOWED[req.status]:
        return Outcome(False, f"{req.call_ref} is {req.status.value}: a CD import can be marked collected only "
                              f"while it is {Status.AWAITING_DROP_OFF.value} (or {Status.AWAITING_DETAILS.value}).")
    warning = ""
    if req.drop_off_site and req.drop_off_site != site:
        warning = (f"{req.call_ref} was to be dropped off at {req.drop_off_site}, not {site}: check the "
                   f"envelope's label. It is marked collected from {site}.")
    try:
        transition(req, Status.COLLECTED, actor_id=current_user.id, note=f"Collected from {site}.")
    except TransitionRefused as refused:  # the table above said yes; kept for a change of the table
        db.session.rollback()
        return Outcome(False, str(refused))
    audit.record(audit.Action.CD_COLLECTED, request_id=req.id,
                 detail=f"{req.call_ref} collected from {site}" + (
                     f" (to be dropped off at {req.drop_off_site})" if warning else ""))
    db.session.commit()
    cds = req.cd_count or 0
    return Outcome(True, f"{req.call_ref} collected: {req.patient_display_name}, {cds} CD{'' if cds == 1 else 's'}.",
                   warning)


def _site_choice(wanted: str | None) -> str:
    """The reception being collected from: as asked, else as last chosen, else the first."""
    if wanted in DROP_OFF_SITES:
        session[SITE_KEY] = wanted
        return wanted
    kept = session.get(SITE_KEY)
    return kept if kept in DROP_OFF_SITES else next(iter(DROP_OFF_SITES))


def _collected_today() -> list[ChartRow]:
    start, end = day_bounds(local_today())
    return collected_between(start, end)


@bp.route("/desk/cds/collect", methods=["GET", "POST"])
@roles_required(*DESK)
def collect() -> Response:
    """The collection page: scan or type a call reference, the CD is marked Collected."""
    form = CollectForm()
    outcome: Outcome | None = None
    status = 200
    if request.method == "POST" and form.validate_on_submit():
        site = _site_choice(form.site.data)
        outcome = collect_cd(form.code.data or "", site)
        if outcome.ok:
            form.code.data = ""  # ready for the next CD
        else:
            status = 422
            form.code.data = (form.code.data or "").strip("\r\n")  # kept as typed, less the scanner's Enter
    elif request.method == "POST":
        status = 422
        outcome = Outcome(False, " ".join(e for errors in form.errors.values() for e in errors))
    form.site.data = _site_choice(form.site.data if request.method == "POST" else request.args.get("site"))
    rows = _collected_today()
    # The list names patients: audited when it shows something this session has not seen.
    if not audit.seen_before(f"cd collection {[r.call_ref for r in rows]!r}"):
        audit.record(audit.Action.LIST_VIEW, detail=f"cd collection: collected today shown={len(rows)}")
        db.session.commit()
    return htmx.render("cds/collect.html", "cds/_collect.html", status=status, form=form, outcome=outcome,
                       rows=rows, today=local_today())


def _chart_args() -> tuple[list[str], str, date, str]:
    """Sites, the chosen site ("" for all), the day, and a problem with the arguments."""
    site = (request.args.get("site") or "").strip().upper()
    problem = ""
    if site and site not in DROP_OFF_SITES:
        problem = f"There is no drop-off site {site[:10]!r}: showing all three."
        site = ""
    day = default_collection_date(local_today())
    raw = (request.args.get("date") or "").strip()
    if raw:
        try:
            day = date.fromisoformat(raw[:10])
        except ValueError:
            problem = (problem + " " if problem else "") + "The date was not a date (YYYY-MM-DD): showing the next " \
                                                          "collection day."
    return ([site] if site else list(DROP_OFF_SITES)), site, day, problem


def _audit_chart(sections: list[ChartSection], what: str, site: str, day: date) -> None:
    """One audit row per request the chart shows (it names patients), as for a PDF, and
    one for the chart itself; after rendering, so a view that failed is not recorded."""
    for section in sections:
        for row in section.rows:
            audit.record(audit.Action.DOWNLOAD_PDF if what.endswith(".pdf") else audit.Action.VIEW,
                         request_id=row.request_id, detail=f"{row.call_ref} {what} {section.site} {day.isoformat()}")
    audit.record(audit.Action.LIST_VIEW,
                 detail=f'{what}: site="{site or "all"}" date="{day.isoformat()}" '
                        f"shown={sum(len(s.rows) for s in sections)}")
    db.session.commit()


@bp.route("/desk/cds/chart")
@roles_required(*DESK)
def chart_page() -> Response:
    """The collection chart for a site (or all three) and a collection day."""
    sites, site, day, problem = _chart_args()
    sections = chart(sites, day)
    response = Response(render_template("cds/chart.html", sections=sections, site=site, day=day, problem=problem,
                                        sites=DROP_OFF_SITES, blank_rows=BLANK_ROWS))
    _audit_chart(sections, "collection chart", site, day)
    return response


@bp.route("/desk/cds/chart.pdf")
@roles_required(*DESK)
def chart_pdf() -> Response:
    """The collection chart as a PDF: one page per site, the dropper's columns first."""
    sites, site, day, _problem = _chart_args()
    sections = chart(sites, day)
    pdf = render_pdf("pdf/chart.html", sections=sections, day=day, blank_rows=BLANK_ROWS, printed_at=local_now())
    _audit_chart(sections, "collection chart.pdf", site, day)
    response = Response(pdf, mimetype="application/pdf")
    # No patient data in the file name (PITFALLS "Web"): the site and the day only.
    response.headers["Content-Disposition"] = f'inline; filename="cd-collection-{site or "all"}-{day.isoformat()}.pdf"'
    response.headers["Cache-Control"] = "no-store"
    # As for the other PDFs (app/printing/routes.py): Chrome's viewer needs object-src.
    response.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return response
