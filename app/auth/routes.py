"""Sign-in and sign-out pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_user, logout_user

from app import audit
from app.auth.forms import LoginForm
from app.auth.guard import user_by_email
from app.extensions import db

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: an open redirect would hand a signed-in user to anyone."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("main.home")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with e-mail address and password."""
    if current_user.is_authenticated:
        return redirect(url_for("main.home"))
    form = LoginForm()
    if form.validate_on_submit():
        user = user_by_email(form.email.data.strip())
        if user is None or not user.active or not user.check_password(form.password.data):
            audit.record(audit.Action.SIGN_IN_FAILED, actor=form.email.data.strip())
            db.session.commit()
            form.password.errors = ["That e-mail address and password do not match an active account."]
            return render_template("auth/login.html", form=form), 401
        login_user(user)
        audit.record(audit.Action.SIGN_IN, user_id=user.id, actor=user.email)
        db.session.commit()
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out here and everywhere else this account is signed in."""
    user = current_user._get_current_object()
    user.revoke_sessions()
    audit.record(audit.Action.SIGN_OUT, user_id=user.id, actor=user.email)
    db.session.commit()
    logout_user()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))
