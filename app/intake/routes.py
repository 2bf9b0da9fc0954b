"""Request pages: the three forms, one request, my requests."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app import audit, htmx
from app.cds.uploads import latest_upload
from app.extensions import db
from app.ids import MAX_ID, whole_number
from app.intake import changes
from app.intake.duplicates import find_duplicate
from app.intake.forms import CDForm, ExportForm, ImportForm, RequestForm, shown_from_register
from app.intake.service import RequestValues, already_submitted, create_request, offered_institutions
from app.requests.access import visible_request
from app.requests.models import Request
from app.requests.statuses import Kind
from app.timeutil import utcnow
from app.transfers.panel import panel_for
from app.workflow.hours import desk_status
from app.workflow.routes import thread_for

bp = Blueprint("intake", __name__)


PAGE_SIZE = 25
_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FORMS: dict[Kind, type[RequestForm]] = {Kind.IMPORT: ImportForm, Kind.EXPORT: ExportForm, Kind.CD: CDForm}


def _prefill_contact(form: RequestForm) -> None:
    form.contact_name.data = current_user.name
    form.contact_email.data = current_user.email
    form.contact_phone.data = current_user.phone
    if isinstance(form, ImportForm):
        form.department.data = current_user.department


@dataclass(frozen=True)
class DuplicateNotice:
    """What the form may say about an earlier request for the same examination.

    Only its call reference always (call references are not patient data); its status
    and a link only to someone who may open it (its requester, or the desk).
    """

    call_ref: str
    status: str | None
    own: bool
    visible: bool


def _duplicate_notice(earlier: Request) -> DuplicateNotice:
    own = earlier.requester_id == current_user.id
    visible = own or current_user.is_desk
    return DuplicateNotice(
        call_ref=earlier.call_ref,
        status=earlier.status.value if visible else None,
        own=own,
        visible=visible,
    )


def _edit_exam_lines(form: RequestForm, action: str) -> bool:
    """Add or remove an exam line (no validation, nothing saved). True if it did."""
    if action == "add_exam":
        if len(form.exams.entries) < form.max_exam_lines:
            form.exams.append_entry()
            form.exams.entries[-1].form.exam_date.render_kw = {"autofocus": True}
        return True
    if action.startswith("remove_exam:"):
        index = action.partition(":")[2]
        line = whole_number(index, 0, len(form.exams.entries) - 1)
        if line is not None and len(form.exams.entries) > 1:
            kept = [e.form.data for i, e in enumerate(form.exams.entries) if i != line]
            while form.exams.entries:
                form.exams.pop_entry()
            for data in kept:
                form.exams.append_entry(data)
        return True
    return False


def _values(form: RequestForm, kind: Kind) -> RequestValues:
    """The validated form as plain values for the service."""
    assert form.patient is not None, "validate() matches the patient first"  # noqa: S101 - an invariant (validate() ran), not a check
    return RequestValues(kind=kind, patient=form.patient, answers=form.data, exams=tuple(form.exam_keys()),
                         submission_key=form.submission_key.data or None)


def _form_page(kind: Kind):  # noqa: ANN202
    form = FORMS[kind]()
    action = request.form.get("action", "")
    status = 200
    duplicate: DuplicateNotice | None = None
    if not _KEY.fullmatch(form.submission_key.data or ""):
        form.submission_key.data = str(uuid.uuid4())
    if request.method == "GET":
        _prefill_contact(form)
    elif _edit_exam_lines(form, action):
        if htmx.is_htmx():
            return render_template("intake/_exam_lines.html", form=form, kind=kind)
    elif (earlier := already_submitted(form.submission_key.data, current_user)) is not None:
        flash(f"This form was already submitted as {earlier.call_ref}; it was not sent twice.", "info")
        return redirect(url_for("intake.show", call_ref=earlier.call_ref))
    elif not form.validate_on_submit():
        # 422 on a refused submission: the page shows the errors; nothing was saved.
        status = 422
    elif (same_exam := find_duplicate(form.s_number.data, form.exam_keys(), kind)) is not None and not (
        form.confirm_duplicate.data
    ):
        # 409: valid, but the same examination is already asked for; nothing is saved
        # until the requester says it is a new request (the box beside the warning).
        duplicate = _duplicate_notice(same_exam)
        status = 409
    else:
        try:
            req = create_request(_values(form, kind), current_user, duplicate_of=same_exam)
            db.session.commit()
        except IntegrityError:
            # The same form's other click won the race: show the request it made.
            db.session.rollback()
            earlier = already_submitted(form.submission_key.data, current_user)
            if earlier is None:
                raise
            return redirect(url_for("intake.show", call_ref=earlier.call_ref))
        flash(f"Request {req.call_ref} submitted.", "success")
        return redirect(url_for("intake.show", call_ref=req.call_ref, submitted=1))
    institutions = offered_institutions()
    return (
        render_template(
            f"intake/new_{kind.value}.html",
            form=form,
            kind=kind,
            institutions=institutions,
            duplicate=duplicate,
            hours=desk_status(utcnow()),
            pas=shown_from_register(form) if request.method == "POST" else None,  # issue 13.8
        ),
        status,
    )


@bp.route("/requests/new/import", methods=["GET", "POST"])
def new_import():
    """Request images from another hospital (Appendix 2)."""
    return _form_page(Kind.IMPORT)


@bp.route("/requests/new/export", methods=["GET", "POST"])
def new_export():
    """Ask for UHL images to be sent to another hospital (Appendix 3)."""
    return _form_page(Kind.EXPORT)


@bp.route("/requests/new/cd", methods=["GET", "POST"])
def new_cd():
    """Hand in CDs for upload to PACS (Appendix 6)."""
    return _form_page(Kind.CD)


@bp.route("/requests/<call_ref>")
def show(call_ref: str):
    """Everything submitted on one request (audited: it shows patient data)."""
    req = visible_request(call_ref)
    audit.record(audit.Action.VIEW, request_id=req.id, detail=req.call_ref)
    db.session.commit()
    submitted = request.args.get("submitted") == "1"
    earlier = req.duplicate_of
    return render_template(
        "intake/show.html",
        req=req,
        submitted=submitted,
        duplicate=_duplicate_notice(earlier) if earlier is not None else None,
        hours=desk_status(utcnow()) if submitted else None,
        messages=thread_for(req),
        transfer_panel=panel_for(req) if current_user.is_desk else None,
        cd_upload=latest_upload(req) if req.kind == Kind.CD else None,
        can_correct=_own(req) and not changes.correction_refused(req),
        can_cancel=_own(req) and not changes.cancel_refused(req),
    )


@bp.route("/requests", methods=["GET", "POST"])
def mine():
    """My requests, newest first, with a search box (call reference or patient name).

    The search is POSTed so that patient names never appear in URLs, server logs or
    the browser's history (PITFALLS "Web"). Audited (issue 11.9): the list shows patient
    names, and a search's row keeps what was searched for; the list's own 10-second poll
    writes nothing (`audit.seen_before`).
    """
    query = (request.form.get("q") or "").strip()[:80]
    page = whole_number(request.form.get("page"), 1, MAX_ID) or 1  # a crafted page number: the first page
    stmt = sa.select(Request).where(Request.requester_id == current_user.id)
    if query:
        like = f"%{query.lower()}%"
        stmt = stmt.where(
            sa.or_(
                sa.func.lower(Request.call_ref).like(like),
                sa.func.lower(Request.family_name).like(like),
                sa.func.lower(Request.given_name).like(like),
                Request.s_number == query.upper(),
            )
        )
    total = db.session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = db.session.scalars(
        stmt.order_by(Request.created_at.desc(), Request.id.desc())
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    ).all()
    response = htmx.render(
        "intake/mine.html", "intake/_my_rows.html",
        rows=rows, q=query, page=page, total=total, pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
    )
    # After rendering: a page that fails leaves no row.
    if not (audit.seen_before(f"my requests {page} {query!r}") and htmx.is_poll()):
        searched = audit.criteria([("q", query)])
        audit.record(audit.Action.SEARCH if searched else audit.Action.LIST_VIEW,
                     detail=f"my requests: {searched + ' ' if searched else ''}page={page} shown={len(rows)}")
        db.session.commit()
    return response


# --- the requester's own changes (issue 13.7) -------------------------------------------


def _own(req: Request) -> bool:
    return req.requester_id == current_user.id


def _own_request(call_ref: str) -> Request:
    """The signed-in user's own request; aborts 404 when there is none, 403 when it is
    someone else's (the desk changes requests through its editor, not as their requester)."""
    req = visible_request(call_ref)
    if not _own(req):
        abort(403)
    return req


def _labels(form: RequestForm) -> dict[str, str]:
    return {**{field.name: field.label.text for field in form}, changes.EXAMS: "Examinations"}


@bp.route("/requests/<call_ref>/correct", methods=["GET", "POST"])
def correct(call_ref: str):
    """Correct one's own request while the desk waits for details; it goes back to the desk.

    409 once the request is past Awaiting Details, 403 for someone else's request."""
    req = _own_request(call_ref)
    why = changes.correction_refused(req)
    if why:
        abort(409, description=why)
    form_class = FORMS[req.kind]
    form = form_class(obj=req) if request.method == "GET" else form_class()
    status, unchanged = 200, False
    if request.method == "POST":
        if _edit_exam_lines(form, request.form.get("action", "")):
            if htmx.is_htmx():
                return render_template("intake/_exam_lines.html", form=form, kind=req.kind)
        elif not form.validate_on_submit():
            status = 422  # the page shows the errors; nothing was saved
        else:
            try:
                done = changes.apply_correction(req, _values(form, req.kind), current_user, _labels(form))
                db.session.commit()
            except (changes.NotNow, StaleDataError):
                db.session.rollback()
                abort(409, description=changes.correction_refused(db.session.get_one(Request, req.id))
                      or f"{req.call_ref} was changed by the service desk meanwhile: open it again.")
            if done:
                flash(f"Your corrections to {req.call_ref} are saved: {len(done)} field(s) changed. The request is "
                      "back with the service desk.", "success")
                return redirect(url_for("intake.show", call_ref=req.call_ref))
            status, unchanged = 422, True
    response = render_template("intake/correct.html", req=req, form=form, kind=req.kind, unchanged=unchanged,
                               institutions=offered_institutions())
    if request.method == "GET":
        # After rendering: a page that fails leaves no row. It shows the patient's details.
        audit.record(audit.Action.VIEW, request_id=req.id, detail=f"{req.call_ref} correction form")
        db.session.commit()
    return response, status


@bp.route("/requests/<call_ref>/cancel", methods=["GET", "POST"])
def cancel(call_ref: str):
    """Cancel one's own request before the desk accepts it: a confirmation page, then the
    cancellation (POST). 409 once accepted, 403 for someone else's request."""
    req = _own_request(call_ref)
    why = changes.cancel_refused(req)
    if why:
        abort(409, description=why)
    if request.method == "GET":
        return render_template("intake/cancel.html", req=req)
    try:
        changes.cancel(req, current_user)
        db.session.commit()
    except (changes.NotNow, StaleDataError):
        db.session.rollback()
        abort(409, description=changes.cancel_refused(db.session.get_one(Request, req.id))
              or f"{req.call_ref} was changed by the service desk meanwhile: open it again.")
    flash(f"{req.call_ref} is cancelled. The service desk will not work on it.", "success")
    return redirect(url_for("intake.show", call_ref=req.call_ref))
