"""Users (issue 14.1): find, create, change role, deactivate and reactivate, unlock after the
sign-in throttle, force a password reset.

Every change is audited: who is the signed-in administrator (the row's user), what and to
whom is the detail ("user 12 a.b@nhs.net: role analyst -> requester"). The rules are the
CLI's (app/auth/cli.py): the same password rule, and a role change or a deactivation ends the
user's sessions at once. Two more here: the last active administrator account is never
demoted or deactivated, and DESK_REQUIRES_TRAINING ties the desk roles to the training
register (app/auth/training.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user
from flask_wtf import FlaskForm
from redis.exceptions import RedisError
from wtforms import BooleanField, EmailField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length

from app import audit, htmx
from app.admin import bp
from app.auth import throttle
from app.auth.admins import LAST_ADMIN, leaves_no_admin
from app.auth.guard import roles_required, user_by_email
from app.auth.models import Role, User
from app.auth.passwords import WeakPassword, check_password
from app.auth.training import TrainingRecord, training_refusal
from app.extensions import db
from app.ids import MAX_ID, whole_number

PAGE_SIZE = 50
ROLE_CHOICES = [SelectChoice(role.value, role.label) for role in Role]

def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


class UserForm(FlaskForm):
    """A new user: who they are, their role and an initial password."""

    name = StringField("Full name", filters=[_stripped],
                       validators=[DataRequired("Enter the person's full name."), Length(max=120)])
    email = EmailField("NHS e-mail address", filters=[_stripped],
                       validators=[DataRequired("Enter their e-mail address."), Length(max=254)])
    role = SelectField("Role", choices=ROLE_CHOICES, default=Role.REQUESTER.value)
    phone = StringField("Phone or extension (optional)", filters=[_stripped], validators=[Length(max=40)])
    department = StringField("Department (optional)", filters=[_stripped], validators=[Length(max=120)])
    password = PasswordField("Initial password", validators=[DataRequired("Enter an initial password."),
                                                             Length(max=200)],
                             render_kw={"autocomplete": "new-password"})
    must_change_password = BooleanField("They choose their own password when they first sign in", default=True)


class RoleForm(FlaskForm):
    """A user's new role."""

    role = SelectField("Role", choices=ROLE_CHOICES)


def _user(user_id: int) -> User:
    """The user with this id; aborts 404 when there is none."""
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


def _whom(user: User) -> str:
    """The target of a change, as the audit names it."""
    return f"user {user.id} {user.email}"


# --- the list -----------------------------------------------------------------------------


@bp.route("/users")
@roles_required(Role.ADMIN)
def users():
    """Every user, searchable by name or e-mail address and filtered by role, a page at a time."""
    q = (request.args.get("q") or "").strip()[:100]
    role_value = request.args.get("role") or ""
    role = Role(role_value) if role_value in {r.value for r in Role} else None
    page = whole_number(request.args.get("page"), 1, MAX_ID) or 1
    stmt = sa.select(User)
    if q:
        needle = q.lower()
        stmt = stmt.where(sa.or_(sa.func.lower(User.name).contains(needle, autoescape=True),
                                 sa.func.lower(User.email).contains(needle, autoescape=True)))
    if role is not None:
        stmt = stmt.where(User.role == role)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(page, pages)
    rows = db.session.scalars(
        stmt.order_by(sa.func.lower(User.name), User.id).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    ).all()
    return htmx.render("admin/users.html", "admin/_users_rows.html", rows=rows, q=q, role=role.value if role else "",
                       roles=list(Role), page=page, pages=pages, total=total)


# --- create -------------------------------------------------------------------------------


@bp.route("/users/new", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def user_new():
    """Create a user: the CLI's rules (password, unique e-mail address) and the training rule."""
    form = UserForm()
    if not form.is_submitted():
        return render_template("admin/user_new.html", form=form)
    form.validate()
    email = form.email.data or ""
    if not form.email.errors:
        try:
            email = validate_email(email, check_deliverability=False).normalized
        except EmailNotValidError:
            form.email.errors.append("Enter a valid e-mail address, e.g. name.surname@nhs.net.")
        else:
            if user_by_email(email) is not None:
                form.email.errors.append(f"A user with the e-mail address {email} already exists.")
    if not form.password.errors and not form.name.errors:
        try:
            check_password(form.password.data or "", name=form.name.data or "", email=email)
        except WeakPassword as exc:
            form.password.errors.append(str(exc))
    if not form.role.errors:
        refusal = training_refusal(None, Role(form.role.data))
        if refusal is not None:
            form.role.errors.append(refusal)
    if any(field.errors for field in form):
        return render_template("admin/user_new.html", form=form), 422
    user = User(email=email, name=form.name.data, role=Role(form.role.data), phone=form.phone.data or "",
                department=form.department.data or "", must_change_password=bool(form.must_change_password.data))
    user.set_password(form.password.data)
    db.session.add(user)
    db.session.flush()
    audit.record(audit.Action.USER_CREATED,
                 detail=f"{_whom(user)}: created as {user.role.value}"
                 + (", to choose their own password at first sign-in" if user.must_change_password else ""))
    db.session.commit()
    flash(f"{user.name} ({user.email}) can now sign in as {user.role.label}.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


# --- one user -----------------------------------------------------------------------------


def _user_page(user: User, *, role_form: RoleForm | None = None, problem: str = "", status: int = 200):
    """The user's page: facts, sign-in state, training, and the forms that change them."""
    if role_form is None:
        role_form = RoleForm(formdata=None, role=user.role.value)
    try:
        sign_in = throttle.account_state(user.email)
    except RedisError:
        current_app.logger.exception("sign-in throttle unavailable (Redis)")
        sign_in = None
    training = db.session.scalars(
        sa.select(TrainingRecord).where(TrainingRecord.user_id == user.id)
        .order_by(TrainingRecord.trained_on.desc(), TrainingRecord.id.desc())
    ).all()
    return render_template("admin/user.html", user=user, role_form=role_form, sign_in=sign_in, training=training,
                           problem=problem, is_self=user.id == current_user.id), status


@bp.route("/users/<int:user_id>")
@roles_required(Role.ADMIN)
def user(user_id: int):
    """One user: who they are, their role, whether they can sign in, their training."""
    return _user_page(_user(user_id))


@bp.route("/users/<int:user_id>/role", methods=["POST"])
@roles_required(Role.ADMIN)
def user_role(user_id: int):
    """Give a user another role; their sessions end at once (they sign in again as the new role)."""
    user = _user(user_id)
    form = RoleForm()
    if not form.validate_on_submit():
        return _user_page(user, role_form=form, status=422)
    new, old = Role(form.role.data), user.role
    if new == old:
        flash(f"{user.name} is already {old.label}; nothing changed.", "info")
        return redirect(url_for("admin.user", user_id=user.id))
    refusal = (LAST_ADMIN if leaves_no_admin(user, role=new) else None) or training_refusal(user.id, new)
    if refusal is not None:
        form.role.errors = [refusal]
        return _user_page(user, role_form=form, status=422)
    user.role = new
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, detail=f"{_whom(user)}: role {old.value} -> {new.value}")
    db.session.commit()
    flash(f"{user.name} is now {new.label}; any session of theirs has ended.", "success")
    if user.id == current_user.id:
        # Their own role: this session carries on (with the new token), the others end.
        login_user(user)
        return redirect(url_for("main.home"))
    return redirect(url_for("admin.user", user_id=user.id))


@bp.route("/users/<int:user_id>/deactivate", methods=["GET", "POST"])
@roles_required(Role.ADMIN)
def user_deactivate(user_id: int):
    """Ask, then stop a user signing in; their sessions end at once."""
    user = _user(user_id)
    problem = ""
    if user.id == current_user.id:
        problem = "You cannot deactivate your own account. Ask another administrator."
    elif leaves_no_admin(user, active=False):
        problem = LAST_ADMIN
    elif not user.active:
        problem = f"{user.name} is already deactivated."
    if request.method == "GET" or problem:
        status = 422 if problem and request.method == "POST" else 200
        return render_template("admin/user_deactivate.html", user=user, problem=problem), status
    user.active = False
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, detail=f"{_whom(user)}: deactivated")
    db.session.commit()
    flash(f"{user.name} can no longer sign in; any session of theirs has ended.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


@bp.route("/users/<int:user_id>/reactivate", methods=["POST"])
@roles_required(Role.ADMIN)
def user_reactivate(user_id: int):
    """Let a deactivated user sign in again (with the password they had)."""
    user = _user(user_id)
    if user.active:
        flash(f"{user.name} is active already; nothing changed.", "info")
        return redirect(url_for("admin.user", user_id=user.id))
    user.active = True
    audit.record(audit.Action.USER_CHANGED, detail=f"{_whom(user)}: reactivated")
    db.session.commit()
    flash(f"{user.name} can sign in again.", "success")
    return redirect(url_for("admin.user", user_id=user.id))


@bp.route("/users/<int:user_id>/unlock", methods=["POST"])
@roles_required(Role.ADMIN)
def user_unlock(user_id: int):
    """Lift the sign-in lock of a user's account and forget its failed sign-ins."""
    user = _user(user_id)
    try:
        lifted = throttle.unlock_account(user.email)
    except RedisError:
        current_app.logger.exception("sign-in throttle unavailable (Redis)")
        return _user_page(user, problem="The sign-in lock cannot be lifted for a moment (the desk's Redis does "
                                        "not answer). Try again shortly.", status=503)
    audit.record(audit.Action.SIGN_IN_UNLOCKED,
                 detail=f"{_whom(user)}: account " + ("unlocked" if lifted else "had no lock or failed sign-ins"))
    db.session.commit()
    flash(f"{user.name} can sign in again now." if lifted
          else f"{user.name}'s sign-in was not locked and had no failed attempts.", "success" if lifted else "info")
    return redirect(url_for("admin.user", user_id=user.id))


@bp.route("/users/<int:user_id>/reset-password", methods=["POST"])
@roles_required(Role.ADMIN)
def user_force_reset(user_id: int):
    """Make a user choose a new password at their next sign-in; their sessions end now."""
    user = _user(user_id)
    if user.id == current_user.id:
        return _user_page(user, problem="Change your own password with Change password at the top of the page.",
                          status=422)
    user.must_change_password = True
    user.revoke_sessions()
    audit.record(audit.Action.USER_CHANGED, detail=f"{_whom(user)}: must choose a new password at next sign-in")
    db.session.commit()
    flash(f"{user.name} must choose a new password when they next sign in; any session of theirs has ended.",
          "success")
    return redirect(url_for("admin.user", user_id=user.id))

