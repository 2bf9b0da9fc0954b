"""HTMX in one place: is this request htmx's, the fragment-or-page answer, the redirect.

htmx sends `HX-Request: true` on every request it makes, a history restore included
(`HX-History-Restore-Request: true`: the user went back to a page whose snapshot is not
cached — base.html turns the cache off with `hx-history="false"`). A history restore must
get the whole page, or the fragment becomes the page. And since one URL then answers
two ways, the answer says so with `Vary: HX-Request` (STYLE "HTMX, concretely").

Views never read the HX headers themselves: they call `is_htmx()`, `render()` or
`redirect_to()`. Flask only; no views here.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, Response, after_this_request, make_response, redirect, render_template, request

REQUEST_HEADER = "HX-Request"
# Sent by desk.js on every request an `hx-trigger="every Ns"` poll makes (issue 11.2): a
# poll is not a person's action, so it must not keep the session alive.
POLL_HEADER = "X-IEP-Poll"
HISTORY_RESTORE_HEADER = "HX-History-Restore-Request"
_VARY_NOTED = "iep.htmx.vary"  # request.environ key: the Vary callback is registered once


def is_htmx() -> bool:
    """True when htmx asked for a fragment: `HX-Request: true`, and not a history restore.

    Asking is what makes the answer depend on the header, so, like Flask's session and
    `Vary: Cookie`, the response of this request is marked `Vary: HX-Request` whatever it
    turns out to be (a page, a fragment, a redirect, an error)."""
    _vary_this_response()
    return (
        request.headers.get(REQUEST_HEADER) == "true"
        and request.headers.get(HISTORY_RESTORE_HEADER) != "true"
    )


def is_poll() -> bool:
    """True when the request is a page polling itself, not something a person did."""
    return request.headers.get(POLL_HEADER) == "1"


def render(page_template: str, fragment_template: str, /, *, status: int = 200, **context: Any) -> Response:
    """The fragment for htmx, the full page otherwise (a history restore included), with
    `status` and `Vary: HX-Request`."""
    template = fragment_template if is_htmx() else page_template
    return vary(make_response(render_template(template, **context), status))


def redirect_to(url: str, *, htmx_status: int = 200) -> Response:
    """Send the browser to `url`: a 302 for a plain request (and a history restore, which
    follows it and gets a page), `HX-Redirect` for htmx — a 302 would be followed by the
    XHR and its page swapped into the element that asked (PITFALLS "Web").

    `htmx_status` is the status of the htmx answer: 200, or e.g. 401 for the sign-in
    guard (htmx follows `HX-Redirect` whatever the status)."""
    if is_htmx():
        return vary(Response(status=htmx_status, headers={"HX-Redirect": url}))
    # Typed as Werkzeug's Response; in a request it is made by the app's response_class, Flask's.
    return vary(cast(Response, redirect(url)))


def vary(response: Response) -> Response:
    """Mark `response` as one that differs by `HX-Request`."""
    response.vary.add(REQUEST_HEADER)
    return response


def install(app: Flask) -> None:
    """Every answer to a request htmx sent carries `Vary: HX-Request`, also from the views
    that answer htmx and a browser alike (polled fragments): a cache must never hand a
    fragment to a plain request for the same URL."""

    @app.after_request
    def vary_htmx_answers(response: Response) -> Response:
        if request.headers.get(REQUEST_HEADER):
            vary(response)
        return response


def _vary_this_response() -> None:
    if request.environ.get(_VARY_NOTED):
        return
    request.environ[_VARY_NOTED] = True
    after_this_request(vary)
