"""The audit viewer (issue 14.5; guideline 2.7 a: who looked at a patient's record).

Three views, admin only, each audited (`Action.AUDIT_VIEWED`, its filters as search
criteria, as audit.py's docstring allows):

- `/admin/audit`: the trail, newest first, filtered by user, patient, call reference,
  action and London dates; pages by keyset on (at, id), which the indexes of migration
  0014 serve.
- `/admin/audit.csv`: the same filtered rows as CSV, streamed.
- `/admin/audit/patient`: "who has looked at this patient": each person, their role,
  first and last access and how many rows, in one query.

Patient identifiers never travel in a URL (nor so into a server's access log): the
filter form is POSTed. Without a patient it redirects to `/admin/audit?...` (its filters
in the URL, a page that can be bookmarked and reloaded); with one it answers the POST
itself, and its pages are POSTed too. A `patient` in a query string is ignored.

A patient's rows are those of their requests (by S number, NHS number or register row),
and the searches and views that named them: a criterion equal to the S number or NHS
number (`s_number="S1234567"`, `q="..."`), or the register row's id ("patient record 12",
the PAS look-up and the trauma screen). Searches by name alone are not counted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Response, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import HiddenField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional, ValidationError

from app import audit
from app.admin import bp
from app.audit import Action, AuditEvent
from app.auth.guard import roles_required
from app.auth.models import Role, User
from app.extensions import db
from app.intake.forms import UKDateField
from app.patients.models import Patient
from app.requests.models import Request
from app.requests.validators import FieldError, clean_nhs_number, clean_s_number, format_nhs_number
from app.timeutil import LONDON, as_local, utcnow

PAGE_SIZE = 50
# Where a patient may be named in a row's detail (see the module's docstring).
NAMING_ACTIONS = (Action.SEARCH.value, Action.VIEW.value, Action.AUDIT_VIEWED.value)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MICROSECOND = 253402300799999999  # 9999-12-31T23:59:59.999999Z, since the epoch
_MAX_ID = 2**63 - 1


def _action_label(value: str) -> str:
    return value.replace("_", " ").capitalize()


def patient_identifier(text: str) -> tuple[str, str] | None:
    """("s_number" | "nhs_number", the clean value) for what was typed; None for nothing;
    ValidationError (saying why) for neither."""
    text = text.strip()
    if not text:
        return None
    if any(c.isalpha() for c in text[1:]):
        raise ValidationError("Enter an S number (e.g. S1234567) or an NHS number (10 digits), not a name.")
    try:
        if text[0] in "sS":
            return "s_number", clean_s_number(text)
        return "nhs_number", clean_nhs_number(text)
    except FieldError as exc:
        raise ValidationError(str(exc)) from exc


class AuditFilterForm(FlaskForm):
    """The audit viewer's filters. Read from the query string on GET (the patient left out)
    and from the body on POST; CSRF is checked on every POST by the app's CSRFProtect."""

    class Meta:
        csrf = False  # also read from a GET's query string; the POSTed form carries the token

    user = StringField("User (name or e-mail)", validators=[Optional(), Length(max=254)])
    patient = StringField("Patient (S number or NHS number)", validators=[Optional(), Length(max=20)])
    call_ref = StringField("Call reference", validators=[Optional(), Length(max=20)])
    action = SelectField("Action", validate_choice=False,
                         choices=[SelectChoice("", "Any")] + [SelectChoice(a.value, _action_label(a.value))
                                                              for a in Action])
    date_from = UKDateField("From (date)", validators=[Optional()])
    date_to = UKDateField("To (date, included)", validators=[Optional()])
    after = HiddenField()  # the page's keyset cursor; posted by the "Older" button

    identifier: tuple[str, str] | None = None  # ("s_number" | "nhs_number", the clean value)

    def validate_patient(self, field: StringField) -> None:
        self.identifier = patient_identifier(field.data or "")

    def validate_action(self, field: SelectField) -> None:
        if (field.data or "") not in {a.value for a in Action} | {""}:
            raise ValidationError("Choose an action from the list.")

    def validate_date_to(self, field: UKDateField) -> None:
        if field.data and self.date_from.data and field.data < self.date_from.data:
            raise ValidationError("The 'to' date is before the 'from' date: swap them, or change one.")

    def filters(self) -> Filters:
        return Filters(user=(self.user.data or "").strip(), patient=self.identifier,
                       call_ref=(self.call_ref.data or "").strip().upper(), action=self.action.data or "",
                       date_from=self.date_from.data, date_to=self.date_to.data)


class PatientForm(FlaskForm):
    """The one field of "who has looked at this patient" (POSTed: never in a URL)."""

    patient = StringField("Patient (S number or NHS number)", validators=[Length(max=20)])
    identifier: tuple[str, str] | None = None

    def validate_patient(self, field: StringField) -> None:
        self.identifier = patient_identifier(field.data or "")
        if self.identifier is None:
            raise ValidationError("Enter the patient's S number or NHS number.")


# --- The filters as SQL -----------------------------------------------------------------------

def _like(text: str) -> str:
    """`text` anywhere, as a LIKE pattern with its own % and _ taken literally (escape \\)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _utc_midnight(day: date) -> datetime:
    """The first moment of a London day, in UTC: stored times are UTC (naive on SQLite)."""
    return datetime.combine(day, time(0), tzinfo=LONDON).astimezone(UTC)


def patient_scope(kind: str, value: str) -> sa.ColumnElement[bool]:
    """The audit rows about one patient (see the module's docstring), as `id IN (...)`: the
    ids are gathered first, so a page or the who-has-looked count reads only those rows. Their
    requests' rows come by index; the rows naming them by matching each row that can name a
    patient (a search, look-up or view with no request) against a handful of LIKE patterns,
    the one part that grows with the trail (about 80 ms for 40,000 searches on PostgreSQL).
    `value` is a clean S or NHS number (S and digits only), safe in a LIKE pattern as it is."""
    register = (Patient.s_number == value) if kind == "s_number" else (Patient.nhs_number == value)
    has_nhs = sa.and_(Patient.nhs_number.is_not(None), Patient.nhs_number != "")
    # One SELECT per way in, each on its own index (an OR of them is misjudged by the planner).
    requests_of = sa.union(
        sa.select(Request.id).where((Request.s_number if kind == "s_number" else Request.nhs_number) == value),
        sa.select(Request.id).where(Request.patient_id.in_(sa.select(Patient.id).where(register))),
        sa.select(Request.id).where(Request.s_number.in_(sa.select(Patient.s_number).where(register))),
        sa.select(Request.id).where(Request.nhs_number.in_(sa.select(Patient.nhs_number).where(register, has_nhs))),
    )
    # A criterion equal to the number as typed, or to the register's S number or NHS number
    # (as the NHS prints it, or with dashes), or the register row's "patient record <id>".
    # LIKE, not ILIKE (which lower-cases every detail for every pattern): the only letter is
    # the S, so both of its cases are patterns.
    spaced = format_nhs_number(value)
    typed = [value, value.lower()] if kind == "s_number" else [value, spaced, spaced.replace(" ", "-")]
    nhs = Patient.nhs_number
    nhs_spaced = sa.func.substr(nhs, 1, 3) + " " + sa.func.substr(nhs, 4, 3) + " " + sa.func.substr(nhs, 7, 4)
    nhs_dashed = sa.func.substr(nhs, 1, 3) + "-" + sa.func.substr(nhs, 4, 3) + "-" + sa.func.substr(nhs, 7, 4)
    record = "%patient record " + sa.cast(Patient.id, sa.String)
    patterns = sa.union_all(
        *[sa.select(sa.literal(f'%="{text}"%', sa.String).label("pattern")) for text in typed],
        *[sa.select(('%="' + form + '"%').label("pattern")).where(register)
          for form in (Patient.s_number, sa.func.lower(Patient.s_number))],
        *[sa.select(('%="' + form + '"%').label("pattern")).where(register, has_nhs)
          for form in (nhs, nhs_spaced, nhs_dashed)],
        sa.select((record + " %").label("pattern")).where(register),
        sa.select(record.label("pattern")).where(register),  # at the end of the detail
    ).subquery("patterns")
    # Rows that name a patient belong to no request: searches, look-ups, the trauma screen.
    named = (sa.select(AuditEvent.id)
             .join(patterns, AuditEvent.detail.like(patterns.c.pattern))
             .where(AuditEvent.action.in_(NAMING_ACTIONS), AuditEvent.request_id.is_(None)))
    return AuditEvent.id.in_(sa.union(sa.select(AuditEvent.id).where(AuditEvent.request_id.in_(requests_of)), named))


@dataclass(frozen=True)
class Filters:
    user: str = ""
    patient: tuple[str, str] | None = None
    call_ref: str = ""
    action: str = ""
    date_from: date | None = None
    date_to: date | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        conds: list[sa.ColumnElement[bool]] = []
        if self.user:
            like = _like(self.user)
            people = sa.or_(User.name.ilike(like, escape="\\"), User.email.ilike(like, escape="\\"))
            # A person's rows, the failed sign-ins typed with their address (no user id on
            # those), and a name the system signs with ("cli", "system: mail") typed whole.
            conds.append(sa.or_(AuditEvent.user_id.in_(sa.select(User.id).where(people)),
                                AuditEvent.actor.in_(sa.select(User.email).where(people)),
                                AuditEvent.actor == self.user))
        if self.patient:
            conds.append(patient_scope(*self.patient))
        if self.call_ref:
            conds.append(AuditEvent.request_id.in_(sa.select(Request.id).where(Request.call_ref == self.call_ref)))
        if self.action:
            conds.append(AuditEvent.action == self.action)
        if self.date_from:
            conds.append(AuditEvent.at >= _utc_midnight(self.date_from))
        if self.date_to:
            conds.append(AuditEvent.at < _utc_midnight(self.date_to + timedelta(days=1)))
        return conds

    def criteria(self) -> str:
        """The filters as an audit detail's criteria: the patient first (a long user
        filter is what an over-long detail loses)."""
        return audit.criteria([*([self.patient] if self.patient else []), ("user", self.user),
                               ("call_ref", self.call_ref), ("action", self.action),
                               ("date_from", self.date_from.isoformat() if self.date_from else ""),
                               ("date_to", self.date_to.isoformat() if self.date_to else "")])

    def query_args(self) -> dict[str, str]:
        """The filters that may be shown in a URL: all but the patient."""
        args = {"user": self.user, "call_ref": self.call_ref, "action": self.action,
                "date_from": self.date_from.isoformat() if self.date_from else "",
                "date_to": self.date_to.isoformat() if self.date_to else ""}
        return {name: value for name, value in args.items() if value}


def encode_after(at: datetime, row_id: int) -> str:
    """A page's cursor: its last row's time (microseconds since the epoch, UTC) and id."""
    moment = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    return f"{(moment - _EPOCH) // timedelta(microseconds=1)}.{row_id}"


def decode_after(text: str) -> tuple[datetime, int] | None:
    """The (at, id) a page ended on; None (the first page) for a cursor we did not write."""
    micro, dot, row_id = (text or "").partition(".")
    if not dot or not micro.isascii() or not micro.isdigit() or not row_id.isascii() or not row_id.isdigit():
        return None
    if len(micro) > 18 or len(row_id) > 19 or int(micro) > _LAST_MICROSECOND or not 0 < int(row_id) <= _MAX_ID:
        return None
    return _EPOCH + timedelta(microseconds=int(micro)), int(row_id)


def _columns() -> tuple[Any, ...]:
    return (AuditEvent.id, AuditEvent.at, AuditEvent.user_id, User.name, AuditEvent.actor, AuditEvent.action,
            Request.call_ref, AuditEvent.detail, AuditEvent.remote_addr)


def _select(filters: Filters) -> sa.Select[Any]:
    return (sa.select(*_columns())
            .outerjoin(User, User.id == AuditEvent.user_id)
            .outerjoin(Request, Request.id == AuditEvent.request_id)
            .where(*filters.conditions())
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()))


def audit_page(filters: Filters, after: tuple[datetime, int] | None,
               size: int | None = None) -> tuple[list[sa.Row[Any]], str | None]:
    """One page of the filtered trail, newest first, and the cursor of the next (or None)."""
    size = size or PAGE_SIZE
    stmt = _select(filters)
    if after is not None:
        at, row_id = sa.literal(after[0], AuditEvent.at.type), sa.literal(after[1], sa.Integer)
        stmt = stmt.where(sa.tuple_(AuditEvent.at, AuditEvent.id) < sa.tuple_(at, row_id))
    rows = list(db.session.execute(stmt.limit(size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, encode_after(rows[-1].at, rows[-1].id) if more and rows else None


@dataclass(frozen=True)
class Looker:
    user_id: int
    name: str
    email: str
    role: Role
    first: datetime
    last: datetime
    count: int


def who_looked(kind: str, value: str) -> list[Looker]:
    """Each person with rows about the patient, with their role (today's), first and last
    row and how many: one query. The system's own rows (transfers, mail) name no person."""
    stmt = (sa.select(User.id, User.name, User.email, User.role, sa.func.min(AuditEvent.at),
                      sa.func.max(AuditEvent.at), sa.func.count(AuditEvent.id))
            .join(User, User.id == AuditEvent.user_id)
            .where(patient_scope(kind, value))
            .group_by(User.id, User.name, User.email, User.role)
            .order_by(sa.func.max(AuditEvent.at).desc(), User.id))
    return [Looker(*row) for row in db.session.execute(stmt)]


# --- CSV ----------------------------------------------------------------------------------------

CSV_HEADER = ("at (Europe/London)", "event id", "user id", "user name", "actor", "action", "call reference",
              "detail", "remote address")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads these as a formula (OWASP)


def csv_cell(value: object) -> str:
    """One cell as text; one a spreadsheet would run as a formula gets a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_lines(engine: sa.Engine, filters: Filters, before_id: int) -> Iterator[str]:
    """The CSV's lines, the rows written before event `before_id` (the export's own row: the
    file is the trail as it was when asked for). Read while the server sends them, after the
    view has returned and its app context has gone, so on a connection of their own, opened
    on the first line and closed on the last (or when the client goes away)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: tuple[object, ...]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([csv_cell(cell) for cell in cells])
        return buffer.getvalue()

    yield line(CSV_HEADER)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=500).execute(_select(filters).where(AuditEvent.id < before_id)):
            yield line((as_local(row.at).isoformat(timespec="seconds"), row.id, row.user_id, row.name, row.actor,
                        row.action, row.call_ref, row.detail, row.remote_addr))


# --- Views --------------------------------------------------------------------------------------

def _filter_form() -> AuditFilterForm:
    if request.method == "POST":
        return AuditFilterForm(formdata=request.form)
    args = request.args.copy()
    args.poplist("patient")  # never from a URL: it would be in the server's log already
    return AuditFilterForm(formdata=args)


def _show(form: AuditFilterForm, status: int = 200, **context: Any) -> Response:
    page = render_template("admin/auditview.html", form=form, **context)
    return Response(page, status=status)


@bp.route("/audit", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def audit_trail():
    """The audit trail, filtered and paged; a POST without a patient redirects to its URL."""
    form = _filter_form()
    if not form.validate():
        return _show(form, 422, rows=None, next_after=None, filters=None)
    filters = form.filters()
    if request.method == "POST" and filters.patient is None:
        args = filters.query_args() | ({"after": form.after.data} if form.after.data else {})
        return redirect(url_for("admin.audit_trail", **args), 303)
    after = decode_after(form.after.data or "")
    rows, next_after = audit_page(filters, after)
    response = _show(form, rows=rows, next_after=next_after, filters=filters, paged=after is not None)
    page = f"after event {after[1]}" if after else "first"
    audit.record(Action.AUDIT_VIEWED, detail=f'audit trail: {filters.criteria()} page="{page}" shown={len(rows)}')
    db.session.commit()
    return response


@bp.route("/audit.csv", methods=["POST"])
@roles_required(Role.ADMIN)
def audit_csv():
    """The filtered trail as CSV, every row, streamed; bad filters show the page again."""
    form = AuditFilterForm(formdata=request.form)
    if not form.validate():
        return _show(form, 422, rows=None, next_after=None, filters=None)
    filters = form.filters()
    exported = audit.record(Action.AUDIT_VIEWED, detail=f"audit trail CSV: {filters.criteria()}")
    db.session.commit()
    name = f"audit-{as_local(utcnow()):%Y%m%d-%H%M}.csv"
    return Response(_csv_lines(db.engine, filters, exported.id), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-store"})


@bp.route("/audit/patient", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def audit_patient():
    """Who has looked at this patient: each person, their role, first and last access."""
    form = PatientForm()
    if request.method == "GET":
        return render_template("admin/auditview_patient.html", form=form, lookers=None)
    if not form.validate():
        return Response(render_template("admin/auditview_patient.html", form=form, lookers=None), 422)
    assert form.identifier is not None  # noqa: S101 - validate_patient set it
    lookers = who_looked(*form.identifier)
    response = render_template("admin/auditview_patient.html", form=form, lookers=lookers,
                               identifier=form.identifier)
    audit.record(Action.AUDIT_VIEWED, detail=f"who has looked at patient: {audit.criteria([form.identifier])} "
                                             f"people={len(lookers)}")
    db.session.commit()
    return response
