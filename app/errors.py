"""One error page for every HTTP error, and a clear one for an expired form."""

from __future__ import annotations

from flask import Flask, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from app import htmx

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
        return _render(400, "Form expired", message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):  # noqa: ANN202
        """Every other HTTP error, as a page (or a fragment for HTMX)."""
        code = error.code or 500
        return _render(code, error.name, MESSAGES.get(code, error.description or ""))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):  # noqa: ANN202
        """A bug: log it, show a calm page, keep the traceback off the screen."""
        app.logger.exception("unhandled error on %s", request.endpoint)
        return _render(
            500,
            "Something went wrong",
            "The desk hit an unexpected error. Nothing you submitted was half-saved; "
            "please try again, and call the service desk if it happens again.",
        )


def _render(code: int, title: str, message: str):  # noqa: ANN202
    return htmx.render("errors/error.html", "errors/_error.html", status=code, code=code, title=title, message=message)
