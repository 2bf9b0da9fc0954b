"""Deny by default: every endpoint needs a signed-in user unless it is listed here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import sqlalchemy as sa
from flask import Flask, Response, abort, request, session, url_for
from flask_login import current_user

from app import htmx
from app.auth.models import Role, User
from app.extensions import db, login_manager

PUBLIC_ENDPOINTS = frozenset({"auth.login", "static", "main.healthz"})
# Answered without touching the session: a client that has none gets no cookie from them.
SESSIONLESS_ENDPOINTS = frozenset({"static", "main.healthz"})

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


def install_guard(app: Flask) -> None:
    @app.before_request
    def require_sign_in() -> Response | None:
        if request.endpoint in SESSIONLESS_ENDPOINTS:
            # Marking the session permanent writes into it, and Flask then sends a cookie
            # even to a load balancer's health check or a stylesheet fetch without one.
            return None
        # Idle timeout: Flask re-signs the cookie on every request and refuses one whose
        # signature is older than PERMANENT_SESSION_LIFETIME, on the server, whatever
        # the browser keeps.
        session.permanent = True
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return None
        if current_user.is_authenticated:
            return None
        # A session cookie that no longer signs anyone in: it expired or was revoked.
        ended = app.config["SESSION_COOKIE_NAME"] in request.cookies
        login_url = url_for("auth.login", next=request.full_path.rstrip("?"), ended=1 if ended else None)
        # htmx gets 401 + HX-Redirect: a 302 would be swapped into the table cell that
        # asked (PITFALLS "Web"); a browser, or a history restore, gets the 302.
        return htmx.redirect_to(login_url, htmx_status=401)


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
