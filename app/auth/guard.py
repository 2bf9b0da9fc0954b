"""Deny by default: every endpoint needs a signed-in user unless it is listed here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, Response, abort, request, session, url_for
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_login import current_user

from app import htmx
from app.auth.models import Role, User
from app.extensions import db, login_manager

PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "main.healthz"})
# Answered without touching the session: a client that has none gets no cookie from them.
SESSIONLESS_ENDPOINTS = frozenset({"static", "main.healthz"})
# All a user whose password an administrator reset may reach until they choose a new one.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.change_password", "auth.logout", "auth.stay_signed_in"})

F = TypeVar("F", bound=Callable[..., Any])


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """Resolve "<id>:<session token>"; a rotated token ends every older session."""
    user_id, _, token = session_id.partition(":")
    if not user_id.isdigit() or not token:
        return None
    user = db.session.get(User, int(user_id))
    if user is None or not user.active or user.session_token != token:
        return None
    return user


class IdleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a poll never re-signs the cookie.

    The idle timeout is the cookie's signature age: Flask refuses a cookie signed longer
    than PERMANENT_SESSION_LIFETIME ago, on the server, whatever the browser keeps, and
    (SESSION_REFRESH_EACH_REQUEST) re-signs it on every request. A page polling every few
    seconds would so keep an unattended desk signed in for ever (issue 11.2): a poll's
    answer sets no cookie at all, so only a person's own requests renew the session, and
    a poll after the lifetime finds no one signed in (the guard's 401 + HX-Redirect)."""

    def should_set_cookie(self, app: Flask, session: SessionMixin) -> bool:
        if htmx.is_poll():
            return False
        return super().should_set_cookie(app, session)


def install_guard(app: Flask) -> None:
    app.session_interface = IdleSessionInterface()

    def require_sign_in() -> Response | None:
        if request.endpoint in SESSIONLESS_ENDPOINTS:
            # Marking the session permanent writes into it, and Flask then sends a cookie
            # even to a load balancer's health check or a stylesheet fetch without one.
            return None
        # Permanent: the cookie carries the idle lifetime (see IdleSessionInterface).
        # Set only when needed: setting it marks the session modified.
        if not session.permanent:
            session.permanent = True
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return None
        if current_user.is_authenticated:
            if current_user.must_change_password and request.endpoint not in PASSWORD_CHANGE_ENDPOINTS:
                # An administrator's forced reset (issue 14.1): nowhere else until it is done.
                return htmx.redirect_to(url_for("auth.change_password"))
            return None
        # A session cookie that no longer signs anyone in: it expired or was revoked.
        # A poll comes only from a page that was signed in; its cookie may be gone already
        # (the browser drops it at the same moment the server stops accepting it).
        ended = app.config["SESSION_COOKIE_NAME"] in request.cookies or htmx.is_poll()
        login_url = url_for("auth.login", next=request.full_path.rstrip("?"), ended=1 if ended else None)
        # htmx gets 401 + HX-Redirect: a 302 would be swapped into the table cell that
        # asked (PITFALLS "Web"); a browser, or a history restore, gets the 302.
        return htmx.redirect_to(login_url, htmx_status=401)

    # First of all before_request functions, before Flask-WTF's CSRF check: a signed-out
    # request to a page that needs sign-in changes nothing, and must be sent to sign in,
    # not told its form expired. The desk table polls with a POST: after the idle time-out
    # its poll gets the HX-Redirect, not a 400 (issue 11.2).
    app.before_request_funcs.setdefault(None, []).insert(0, require_sign_in)


def roles_required(*roles: Role) -> Callable[[F], F]:
    """Let only these roles through; anyone else gets the 403 page (abort 403)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated or current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]  # @wraps keeps view's signature; mypy sees (*args, **kwargs)

    return decorator


def user_by_email(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(sa.func.lower(User.email) == email.lower()))
