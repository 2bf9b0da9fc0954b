"""Who may see which request."""

from __future__ import annotations

import sqlalchemy as sa
from flask import abort
from flask_login import current_user

from app.extensions import db
from app.requests.models import Request


def visible_request(call_ref: str) -> Request:
    """The request with this call reference, if the signed-in user may see it.

    Aborts 404 when there is none and 403 when it is someone else's (a requester sees
    only their own; the desk roles see all).
    """
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    if req is None:
        abort(404)
    if not (current_user.is_desk or req.requester_id == current_user.id):
        abort(403)
    return req
