"""Sign-in and sign-out pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from redis.exceptions import RedisError

from app import audit
from app.auth import throttle
from app.auth.forms import LoginForm, PasswordChangeForm
from app.auth.guard import user_by_email
from app.auth.models import Role, User, verify_password
from app.auth.passwords import WeakPassword, check_password
from app.extensions import db

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str | None:
    """Only same-site paths: an open redirect would hand a signed-in user to anyone."""
    if target and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return None


def landing_for(user: User) -> str:
    """Where a person starts, at the page they work on (issue 13.4; DESIGN "Who uses it"):
    the desk (analysts, AM radiology) at the queue, an admin at the admin home (issue 14.8),
    the on-call radiologist at the trauma transfer, a requester at their own requests."""
    if user.role == Role.ADMIN:
        return url_for("admin.home")
    if user.is_desk:
        return url_for("desk.queue")
    if user.role == Role.RADIOLOGIST:
        return url_for("trauma.page")
    return url_for("intake.mine")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with e-mail address and password."""
    if current_user.is_authenticated:
        return redirect(url_for("main.home"))
    form = LoginForm()
    if form.validate_on_submit():
        email = form.email.data.strip()
        address = request.remote_addr or ""
        try:
            refusal = throttle.check(email, address)
        except RedisError:
            # Fail closed: without the shared counters nothing stops a guessing run.
            current_app.logger.exception("sign-in throttle unavailable (Redis)")
            form.password.errors = ["Sign-in is unavailable for a moment. Try again shortly, or call the "
                                    "service desk (x18000)."]
            return render_template("auth/login.html", form=form), 503
        if refusal is not None:
            # Not checked at all (a right password is refused too), and worded the same
            # whether or not the account exists.
            if throttle.first_refusal(address, refusal):
                audit.record(audit.Action.SIGN_IN_FAILED, actor=email,
                             detail="refused: too many failed attempts (further refusals from this address "
                                    "while it lasts are not recorded)")
                db.session.commit()
            form.password.errors = [refusal.message]
            response = current_app.make_response((render_template("auth/login.html", form=form), 429))
            response.headers["Retry-After"] = str(refusal.retry_after)
            return response
        user = user_by_email(email)
        # verify_password hashes a dummy for an unknown account: same time either way.
        if not verify_password(user, form.password.data) or user is None or not user.active:
            audit.record(audit.Action.SIGN_IN_FAILED, actor=email)
            for limit in throttle.record_failure(email, address):
                audit.record(
                    audit.Action.SIGN_IN_LOCKED,
                    user_id=user.id if user is not None and limit is throttle.ACCOUNT else None,
                    actor=email,
                    detail=f"{limit.kind} locked for {limit.lock_seconds // 60} min after "
                    f"{limit.lock_at} failed sign-ins" + (f" from {address}" if limit is throttle.ADDRESS else ""),
                )
            db.session.commit()
            form.password.errors = ["That e-mail address and password do not match an active account."]
            return render_template("auth/login.html", form=form), 401
        throttle.record_success(email)
        _new_session()
        login_user(user)
        audit.record(audit.Action.SIGN_IN, user_id=user.id, actor=user.email)
        db.session.commit()
        return redirect(_safe_next(request.args.get("next")) or landing_for(user))
    return render_template("auth/login.html", form=form)


def _new_session() -> None:
    """Start an empty session with a new CSRF token (issue 11.4): nothing from before
    sign-in, or from the previous user of this browser, carries over."""
    session.clear()
    session.permanent = True
    g.pop("csrf_token", None)  # Flask-WTF keeps the request's token here too


@bp.route("/logout", methods=["POST"])
def logout():
    """Sign out here and everywhere else this account is signed in."""
    user = current_user._get_current_object()
    user.revoke_sessions()
    audit.record(audit.Action.SIGN_OUT, user_id=user.id, actor=user.email)
    db.session.commit()
    logout_user()
    _new_session()
    flash("You have signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/session/stay", methods=["POST"])
def stay_signed_in():
    """The warning's "Stay signed in" button: a person's own action, so it renews the session (204)."""
    return Response(status=204)


@bp.route("/account/password", methods=["GET", "POST"])
def change_password():
    """Choose a new password (the page an administrator's forced reset sends a user to)."""
    user: User = current_user._get_current_object()
    forced = user.must_change_password
    form = PasswordChangeForm()

    def again(status: int) -> tuple[str, int]:
        return render_template("auth/password.html", form=form, forced=forced), status

    if not form.validate_on_submit():
        return again(422 if form.errors else 200)
    address = request.remote_addr or ""
    try:
        # The current password is a password guess like any other: the sign-in throttle
        # counts the wrong ones, and its lock stops them here too.
        refusal = throttle.check(user.email, address)
        if refusal is None and not user.check_password(form.current_password.data):
            for limit in throttle.record_failure(user.email, address):
                audit.record(audit.Action.SIGN_IN_LOCKED, user_id=user.id if limit is throttle.ACCOUNT else None,
                             detail=f"{limit.kind} locked for {limit.lock_seconds // 60} min after {limit.lock_at} "
                             "failed attempts (a wrong current password on the password page)")
            db.session.commit()
            form.current_password.errors = ["This is not your current password."]
            return again(422)
    except RedisError:
        current_app.logger.exception("sign-in throttle unavailable (Redis)")
        form.current_password.errors = ["Passwords cannot be changed for a moment. Try again shortly."]
        return again(503)
    if refusal is not None:
        form.current_password.errors = [refusal.message]
        return again(429)
    try:
        check_password(form.new_password.data, name=user.name, email=user.email)
    except WeakPassword as exc:
        form.new_password.errors = [str(exc)]
        return again(422)
    if user.check_password(form.new_password.data):
        form.new_password.errors = ["Choose a password different from your current one."]
        return again(422)
    user.set_password(form.new_password.data)
    user.must_change_password = False
    user.revoke_sessions()  # every other session of this account ends; this one starts afresh below
    audit.record(audit.Action.PASSWORD_CHANGED,
                 detail="by the user" + (", as an administrator asked" if forced else ""))
    db.session.commit()
    # The same person in the same browser: the session (and its CSRF token, so other open
    # tabs' forms still work) carries on under the account's new token.
    login_user(user)
    flash("Your password has been changed. Any other session of your account has ended.", "success")
    return redirect(landing_for(user))
