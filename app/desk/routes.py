"""The analyst workbench: queue, filters, live refresh, inline edits."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from flask import Blueprint, Response, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy.orm.exc import StaleDataError

from app import audit, htmx
from app.auth.guard import roles_required
from app.auth.models import DESK_ROLES, User
from app.desk.forms import EditForm, FilterForm
from app.desk.queries import (
    SORTS,
    TABS,
    Filters,
    QueueStamp,
    active_transfers,
    decode_cursor,
    queue_page,
    queue_row,
    queue_stamp,
    tab_counts,
    time_left,
)
from app.desk.service import MBP_FIELDS, EditValues, StaleEdit, apply_edit
from app.extensions import db
from app.ids import parse_id
from app.requests.access import visible_request
from app.requests.models import Request
from app.timeutil import local_today
from app.workflow import mail
from app.workflow.machine import TransitionRefused, allowed_next
from app.workflow.models import OutboxEmail, OutboxStatus

bp = Blueprint("desk", __name__)


DESK = tuple(DESK_ROLES)


def _desk_users() -> list[User]:
    return list(
        db.session.scalars(sa.select(User).where(User.role.in_(DESK), User.active).order_by(User.name))
    )


_PLAIN = re.compile(r"[A-Za-z0-9._~-]+")  # what quote() leaves as it is (every call reference)


class RowLinks:
    """The links of the queue's rows (the request's page, its editor), made from one
    `url_for` each per answer: two calls per row and one per duplicate were a fifth of
    rendering a page of 50. The call reference is quoted as the URL map quotes a path
    segment, so the links are the ones `url_for` gives."""

    _MARK = "CALLREF"

    def __init__(self) -> None:
        self._show = url_for("intake.show", call_ref=self._MARK)
        self._edit = url_for("desk.edit", call_ref=self._MARK)

    @staticmethod
    def _segment(call_ref: str) -> str:
        return call_ref if _PLAIN.fullmatch(call_ref) else quote(call_ref, safe="!$&'()*+,/:;=@")

    def show(self, call_ref: str) -> str:
        return self._show.replace(self._MARK, self._segment(call_ref))

    def edit(self, call_ref: str) -> str:
        return self._edit.replace(self._MARK, self._segment(call_ref))


def _filters(form: FilterForm) -> Filters:
    return Filters(
        call_ref=form.call_ref.data or "",
        patient_name=form.patient_name.data or "",
        nhs_number=form.nhs_number.data or "",
        s_number=form.s_number.data or "",
        institution=form.institution.data or "",
        kind=form.kind.data or "",
        status=form.status.data or "",
        priority=form.priority.data or "",
        date_from=form.date_from.data if not form.date_from.errors else None,
        date_to=form.date_to.data if not form.date_to.errors else None,
        assigned=form.assigned.data or "",
    )


def _queue_context(form: FilterForm, *, keep_page: bool = False, stamp: QueueStamp | None = None) -> dict[str, Any]:
    """Resolve the view from the form: tab, sort and page buttons change it; a poll
    (`keep_page`) shows the same page again; any other submission starts at page one."""
    form.validate()  # fills .errors for bad dates; other filters are free text
    tab = form.tab.data if form.tab.data in TABS else "action"
    sort = form.sort.data if form.sort.data in SORTS else "created"
    descending = form.direction.data != "asc"
    tab_choice = request.form.get("tab_choice")
    sort_choice = request.form.get("sort_choice")
    if tab_choice in TABS:
        tab = tab_choice
    if sort_choice in SORTS:
        # The same column again flips the direction; a new column starts descending
        # (newest, Z-A) except text columns, which read best A-Z.
        descending = (not descending) if sort_choice == sort else sort_choice in ("created", "priority")
        sort = sort_choice
    if "page_cursor" in request.form:
        form.cursor.data = request.form["page_cursor"]
    elif not keep_page:
        form.cursor.data = ""
    form.tab.data, form.sort.data = tab, sort
    filters = _filters(form)
    stamp = stamp or queue_stamp()
    page = queue_page(
        tab=tab, filters=filters, me=current_user.id, sort=sort, descending=descending,
        cursor=form.cursor.data or None,
    )
    shown = page.pinned + page.rows
    return {
        "form": form,
        "tab": tab,
        "tabs": TABS,
        "sort": sort,
        "descending": descending,
        "sorts": SORTS,
        "page": page,
        "counts": tab_counts(filters, current_user.id),
        # The banners of Action Required, counted by the stamp's statement.
        "unmatched": stamp.unmatched if tab == "action" else 0,
        "refused": stamp.refused if tab == "action" else 0,
        "undelivered": stamp.undelivered if tab == "action" else 0,
        "transfers": active_transfers([r.id for r in shown]),
        "replied": {r.id for r in shown if r.replied},
        "today": local_today(),
        "stamp": stamp.text,
        "time_left": time_left,
        "links": RowLinks(),
    }


def _search_criteria(filters: Filters) -> list[tuple[str, object]]:
    """What the analyst searched for, the patient's identifiers first (so that a long
    free-text filter is what an over-long detail loses)."""
    return [
        ("nhs_number", filters.nhs_number.strip()),
        ("s_number", filters.s_number.strip()),
        ("patient_name", filters.patient_name.strip()),
        ("call_ref", filters.call_ref.strip()),
        ("institution", filters.institution.strip()),
        ("kind", filters.kind),
        ("status", filters.status),
        ("priority", filters.priority),
        ("date_from", filters.date_from.isoformat() if filters.date_from else ""),
        ("date_to", filters.date_to.isoformat() if filters.date_to else ""),
        ("assigned", filters.assigned),
    ]


def _audit_queue_view(context: dict[str, Any]) -> None:
    """One audit row for the queue a person asked for: a search (with its criteria), a
    tab, a sort or a page (issue 11.9), committed on its own. Called once the answer is
    rendered, so a view that fails leaves no row. A poll of a view already audited in
    this session writes nothing (see `audit.seen_before`)."""
    form, page = context["form"], context["page"]
    searched = _search_criteria(_filters(form))
    criteria = audit.criteria(searched)
    seen = audit.seen_before(
        f"desk {context['tab']} {context['sort']} {context['descending']} {form.cursor.data or ''} {searched!r}")
    if seen and htmx.is_poll():
        return
    after = decode_cursor(form.cursor.data) if form.cursor.data else None
    view = (f'tab="{context["tab"]}" sort="{context["sort"]} {"desc" if context["descending"] else "asc"}" '
            f'page="{f"after request {after[1]}" if after else "first"}" '
            f"shown={len(page.pinned) + len(page.rows)}")
    audit.record(audit.Action.SEARCH if criteria else audit.Action.LIST_VIEW,
                 detail=f"desk queue: {criteria + ' ' if criteria else ''}{view}")
    db.session.commit()


def _filter_form(*, people: bool) -> FilterForm:
    """The filters as submitted; `people`: with the desk's people to choose from under
    "Assigned to" (the whole page shows the select; the table alone does not, and the
    field takes any value: `Filters` reads an id from it or ignores it)."""
    form = FilterForm(formdata=request.form if request.method == "POST" else None)
    form.assigned.choices = [("", "Anyone"), ("me", "Me"), ("none", "Nobody")] + [
        (str(u.id), u.name) for u in (_desk_users() if people else ())
    ]
    for field in form:
        field.id = f"filter-{field.name}"  # the editor beside it has fields of the same names
    return form


@bp.route("/desk", methods=["GET", "POST"])
@roles_required(*DESK)
def queue():
    """The queue: tabs with counts, Blue Light on top, filters, sortable columns (audited)."""
    context = _queue_context(_filter_form(people=not htmx.is_htmx()))
    response = htmx.render("desk/page.html", "desk/_table.html", **context)
    _audit_queue_view(context)
    return response


@bp.route("/desk/table", methods=["POST"])
@roles_required(*DESK)
def table():
    """The live refresh: the table again, or 204 when nothing changed since `stamp`."""
    # The stamp is read before the rows: a change made while the page is being built
    # then shows up in the next poll instead of hiding behind a newer stamp.
    stamp = queue_stamp()
    if request.form.get("stamp") == stamp.text:
        return Response(status=204)
    context = _queue_context(_filter_form(people=False), keep_page=True, stamp=stamp)
    body = render_template("desk/_table.html", **context)
    _audit_queue_view(context)  # the page's own polls write nothing
    return body


def _edit_form(req: Request, formdata=None) -> EditForm:  # noqa: ANN001
    form = EditForm(formdata=formdata, obj=None if formdata else req)
    if formdata is None:
        form.version.data = str(req.version)
        form.status.data = req.status.value
        form.assigned_to.data = str(req.assigned_to_id or "")
        form.note.data = ""
    form.status.choices = [(req.status.value, f"{req.status.value} (now)")] + [
        (s.value, s.value) for s in allowed_next(req.status, req.kind)
    ]
    form.assigned_to.choices = [("", "Nobody")] + [(str(u.id), u.name) for u in _desk_users()]
    if req.assigned_to is not None and str(req.assigned_to.id) not in dict(form.assigned_to.choices):
        # Kept as a choice: saving the other fields must not unassign them unasked.
        form.assigned_to.choices.append((str(req.assigned_to.id), f"{req.assigned_to.name} (no longer on the desk)"))
    return form


def _editor(req: Request, form: EditForm, status: int = 200, *, saved: bool = False, **extra: object) -> Response:
    """For htmx, the request's queue entry (its row, and under it the editor unless
    `saved`: a save closes it and focus goes back to the row's Edit); a page otherwise."""
    context = {"req": req, "form": form, "time_left": time_left, **extra}
    if htmx.is_htmx():
        body = render_template(
            "desk/_entry.html", **context, editing=not saved, saved=saved,
            focus="edit" if saved else "editor",
            transfers=active_transfers([req.id]), replied={req.id} if queue_row(req.id).replied else set(),
            today=local_today(), links=RowLinks(),
        )
        return make_response(body, status)
    return make_response(render_template("desk/edit.html", **context), status)


def _edit_values(form: EditForm) -> EditValues:
    text = {name: form.data[name] or "" for name in ("version", "status", "decline_reason", "note", "assigned_to",
                                                      *MBP_FIELDS) if name != "date_imaging_sent"}
    return EditValues(**text, date_imaging_sent=form.data["date_imaging_sent"])


@bp.route("/desk/requests/<call_ref>/edit", methods=["GET", "POST"])
@roles_required(*DESK)
def edit(call_ref: str):
    """Change status, assignee and MBP fields; a stale version is refused (409).

    Audited (issue 11.9): opening the editor is a view of the request; a save writes
    which fields changed and the status change, in the save's own commit."""
    req = visible_request(call_ref)
    if request.method == "GET":
        response = _editor(req, _edit_form(req))
        audit.record(audit.Action.VIEW, request_id=req.id, detail=f"{req.call_ref} desk editor")
        db.session.commit()  # after rendering: an editor that fails to render leaves no row
        return response
    form = _edit_form(req, request.form)
    if not form.validate():
        return _editor(req, form, 422)
    try:
        apply_edit(req, _edit_values(form), actor_id=current_user.id)
        db.session.commit()
    except TransitionRefused as refusal:
        db.session.rollback()
        (form.note if refusal.field == "note" else form.status).errors.append(str(refusal))
        return _editor(db.session.get_one(Request, req.id), form, 422)
    except (StaleEdit, StaleDataError):
        # Opened before someone else's save, or another analyst saved between our read
        # and our write: show theirs beside ours; a deliberate second save overwrites.
        db.session.rollback()
        fresh = db.session.get_one(Request, req.id)
        current = _edit_form(fresh)
        form.version.data = str(fresh.version)
        return _editor(fresh, form, 409, conflict=current)
    if not htmx.is_htmx():
        flash(f"{req.call_ref} saved.", "success")
        return redirect(url_for("desk.queue"))
    return _editor(req, _edit_form(req), saved=True)


@bp.route("/desk/mail", methods=["GET", "POST"])
@roles_required(*DESK)
def undelivered_mail():
    """E-mails the server refused for good or that failed for a day: correct the address
    if need be, and send again."""
    errors: dict[int, str] = {}
    typed: dict[int, str] = {}
    if request.method == "POST":
        mail_id = parse_id(request.form.get("mail_id"))
        row = db.session.get(OutboxEmail, mail_id) if mail_id is not None else None
        if row is None:
            flash("That e-mail no longer exists.", "error")
            return redirect(url_for("desk.undelivered_mail"))
        address = (request.form.get("to_addr") or "").strip()
        if row.status != OutboxStatus.FAILED.value:
            flash("That e-mail is already back in the outbox.", "success")
            return redirect(url_for("desk.undelivered_mail"))
        if not mail.valid_address(address):
            errors[row.id], typed[row.id] = "Enter a valid e-mail address, like name@uhl-tr.nhs.uk.", address
        else:
            mail.send_again(row, address)
            db.session.commit()
            mail.enqueue_delivery(row.id)
            flash(f"The e-mail to {address} is back in the outbox.", "success")
            return redirect(url_for("desk.undelivered_mail"))
    rows = list(db.session.scalars(
        sa.select(OutboxEmail).where(OutboxEmail.status == OutboxStatus.FAILED.value)
        .order_by(OutboxEmail.created_at.desc(), OutboxEmail.id.desc()).limit(200)))
    refs = dict(db.session.execute(sa.select(Request.id, Request.call_ref).where(
        Request.id.in_({r.request_id for r in rows if r.request_id}))).tuples().all()) if rows else {}
    return render_template("desk/mail.html", rows=rows, refs=refs, errors=errors, typed=typed), \
        (422 if errors else 200)
