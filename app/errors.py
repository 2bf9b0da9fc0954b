"""One error page for every HTTP error, and a clear one for an expired form.

A 403 and a refused CSRF token are audited (issue 11.9): who, the method and the path
(never the query string, which may carry patient data), and the request when the path
names one. Only for a signed-in user: an anonymous client could otherwise fill the
table at will, one row per request. Signed-out requests never reach a 403 (the guard
sends them to sign in first), and the one form they can send is the sign-in page,
whose failures are audited as sign-ins. Each row is committed on its own after rolling
back whatever the refused request had begun (a failed transaction included); if that
fails too, the page is still shown.
"""

from __future__ import annotations

import contextlib

import sqlalchemy as sa
from flask import Flask, Response, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from app import audit, htmx
from app.extensions import db
from app.logs import log_exception
from app.requests.models import Request

MESSAGES = {
    403: "Your role does not give access to this page. If you need it, ask the service desk.",
    404: "There is no such page or request. Check the call reference.",
    405: "That action is not available here.",
    413: "The upload is too large.",
}


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):  # noqa: ANN202
        """The form's security token is missing or belongs to an ended session."""
        message = (
            "This form could not be sent because your session has ended or the page "
            "was opened before you last signed in. Go back, reload the page and send "
            "it again."
        )
        _audit_refusal(app, audit.Action.CSRF_FAILED)
        return _render(400, "Form expired", message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):  # noqa: ANN202
        """Every other HTTP error, as a page (or a fragment for HTMX)."""
        code = error.code or 500
        if code == 403:
            _audit_refusal(app, audit.Action.ACCESS_DENIED)
        return _render(code, error.name, MESSAGES.get(code, error.description or ""))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):  # noqa: ANN202
        """A bug: log it (without its message, which may quote patient data), show a calm
        page, keep the traceback off the screen.

        The session is rolled back first: after a failed statement PostgreSQL refuses
        every other one until then. The page does not load the signed-in user, so it
        renders even with the database down."""
        with contextlib.suppress(Exception):  # the database may be gone; the page must still render
            db.session.rollback()
        log_exception(app.logger, "unhandled error on %s", request.endpoint)
        message = (
            "The desk hit an unexpected error. Nothing you submitted was half-saved; "
            "please try again, and call the service desk if it happens again."
        )
        try:
            return _render(500, "Something went wrong", message, without_user=True)
        except Exception:  # a last resort that needs nothing (security headers still added)
            log_exception(app.logger, "the error page failed on %s", request.endpoint)
            return Response(f"Something went wrong (500). {message}", status=500, mimetype="text/plain")


def _audit_refusal(app: Flask, action: audit.Action) -> None:
    """Audit a refused request of a signed-in user in its own commit (see the module's
    docstring); never raises."""
    try:
        db.session.rollback()
        if not current_user.is_authenticated:
            return
        call_ref = (request.view_args or {}).get("call_ref")
        request_id = None
        if isinstance(call_ref, str) and len(call_ref) <= 40:
            request_id = db.session.scalar(sa.select(Request.id).where(Request.call_ref == call_ref))
        audit.record(action, request_id=request_id, detail=f"{request.method} {request.path}")
        db.session.commit()
    except Exception:
        with contextlib.suppress(Exception):
            db.session.rollback()
        log_exception(app.logger, "could not audit a refused request on %s", request.endpoint)


def _render(code: int, title: str, message: str, **extra: object):  # noqa: ANN202
    return htmx.render("errors/error.html", "errors/_error.html", status=code, code=code, title=title,
                       message=message, **extra)
