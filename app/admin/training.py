"""The training register (issue 14.7; guideline section 3: "Records will be held locally").

Who was trained (a desk user), by whom (a name, or a desk user), when and on what; a list
to search; a wrongly entered record deleted after a confirmation (audited with what it
said). The page also lists the staff with a desk role and no training record, on screen and
as CSV. The rule tying the desk roles to a record is app/auth/training.py's.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response as WerkzeugResponse
from wtforms import EmailField, StringField
from wtforms.validators import DataRequired, InputRequired, Length

from app import audit, htmx
from app.admin import bp
from app.auth.guard import roles_required, user_by_email
from app.auth.models import Role, User
from app.auth.training import TRAINED_ROLES, TrainingRecord, training_required, untrained_desk_staff
from app.extensions import db
from app.ids import MAX_ID, whole_number
from app.intake.forms import UKDateField
from app.timeutil import local_today

PAGE_SIZE = 50


def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class TrainingForm(FlaskForm):
    """One training record."""

    trainee = EmailField("Who was trained (their desk e-mail address)", filters=[_stripped],
                         validators=[DataRequired("Enter the e-mail address of the person trained."),
                                     Length(max=254)])
    trainer = StringField("Trained by", filters=[_stripped],
                          validators=[DataRequired("Enter who gave the training."), Length(max=120)])
    # InputRequired, not DataRequired: an impossible date keeps its own message.
    trained_on = UKDateField("Date of training", validators=[InputRequired("Enter the date of the training.")])
    topic = StringField("What", filters=[_stripped],
                        validators=[DataRequired("Say what the training was, e.g. IEP desk induction."),
                                    Length(max=200)])


def _csv_cell(value: str) -> str:
    """A value a spreadsheet shows as text: a leading = + - @ (a formula) is quoted away."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@bp.route("/training", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def training():
    """The register: record training, search the records, see who has a desk role and none."""
    form = TrainingForm(formdata=None, trainee=(request.args.get("trainee") or "")[:254].strip()) \
        if request.method == "GET" else TrainingForm()
    status = 200
    if request.method == "POST":
        saved = _record(form)
        if saved is not None:
            return saved
        status = 422
    q = (request.args.get("q") or "").strip()[:100]
    page = whole_number(request.args.get("page"), 1, MAX_ID) or 1
    stmt = sa.select(TrainingRecord).join(TrainingRecord.user)
    if q:
        needle = q.lower()
        stmt = stmt.where(sa.or_(*(sa.func.lower(column).contains(needle, autoescape=True) for column in
                                   (User.name, User.email, TrainingRecord.trainer_name, TrainingRecord.topic))))
    total = db.session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(page, pages)
    rows = db.session.scalars(
        stmt.options(so.contains_eager(TrainingRecord.user))
        .order_by(TrainingRecord.trained_on.desc(), TrainingRecord.id.desc())
        .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    ).all()
    context: dict[str, Any] = {"rows": rows, "q": q, "page": page, "pages": pages, "total": total}
    if request.method == "GET" and htmx.is_htmx():
        return htmx.render("admin/training.html", "admin/_training_rows.html", **context)
    return render_template("admin/training.html", form=form, untrained=untrained_desk_staff(),
                           required=training_required(), roles=sorted(r.label for r in TRAINED_ROLES),
                           **context), status


def _record(form: TrainingForm) -> WerkzeugResponse | None:
    """Save the record and redirect, or None with the errors on the form."""
    form.validate()
    trainee = None
    if not form.trainee.errors:
        trainee = user_by_email(form.trainee.data or "")
        if trainee is None:
            form.trainee.errors.append("No desk user has this e-mail address. Add them under Users first.")
    if form.trained_on.data is None and not form.trained_on.errors:  # typed as blanks
        form.trained_on.errors.append("Enter the date of the training.")
    elif form.trained_on.data is not None and form.trained_on.data > local_today():
        form.trained_on.errors.append("The date of training cannot be in the future.")
    if trainee is None or any(field.errors for field in form):
        return None
    typed = form.trainer.data or ""
    trainer = user_by_email(typed) if "@" in typed else None
    record = TrainingRecord(user_id=trainee.id, trainer_name=trainer.name[:120] if trainer else typed,
                            trainer_id=trainer.id if trainer else None, trained_on=form.trained_on.data,
                            topic=form.topic.data, recorded_by_id=current_user.id)
    db.session.add(record)
    db.session.flush()
    audit.record(audit.Action.TRAINING_RECORDED,
                 detail=f"record {record.id} for user {trainee.id} {trainee.email}: {record.describe()}")
    db.session.commit()
    flash(f"Training recorded for {trainee.name}.", "success")
    return redirect(url_for("admin.training"))


@bp.route("/training/<int:record_id>/delete", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def training_delete(record_id: int):
    """Ask, then delete a wrongly entered training record (the audit keeps what it said)."""
    record = db.session.get(TrainingRecord, record_id)
    if record is None:
        abort(404)
    if request.method == "GET":
        return render_template("admin/training_delete.html", record=record)
    trainee = record.user
    audit.record(audit.Action.TRAINING_DELETED,
                 detail=f"record {record.id} for user {trainee.id} {trainee.email}: {record.describe()}")
    db.session.delete(record)
    db.session.commit()
    flash(f"The training record for {trainee.name} has been deleted.", "success")
    return redirect(url_for("admin.training"))


@bp.route("/training/untrained.csv")
@roles_required(Role.ADMIN)
def training_untrained_csv():
    """Staff with a desk role and no training record, as CSV."""
    out = io.StringIO()
    out.write("\ufeff")  # a byte-order mark: Excel then reads the names as UTF-8
    writer = csv.writer(out)
    writer.writerow(["name", "email", "role", "department", "phone", "added"])
    for user in untrained_desk_staff():
        writer.writerow([_csv_cell(user.name), _csv_cell(user.email), user.role.value, _csv_cell(user.department),
                         _csv_cell(user.phone), user.created_at.date().isoformat()])
    filename = f"desk-staff-without-training-{local_today().isoformat()}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
