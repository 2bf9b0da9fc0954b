"""Home page and health check."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, jsonify, redirect
from flask_login import current_user
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.auth.routes import landing_for
from app.extensions import db, redis_conn

bp = Blueprint("main", __name__)


@bp.route("/")
def home():
    """Start page: where the person works (`landing_for`): the queue for the desk, the
    trauma screen for the on-call radiologist (Appendix 4), their requests for a requester."""
    return redirect(landing_for(current_user))


@bp.route("/healthz")
def healthz():
    """200 when the database and Redis answer, 503 otherwise (for the load balancer)."""
    checks = {}
    try:
        db.session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError:
        db.session.rollback()
        checks["database"] = "unreachable"
    try:
        redis_conn().ping()
        checks["redis"] = "ok"
    except (RedisError, OSError):
        checks["redis"] = "unreachable"
    healthy = all(value == "ok" for value in checks.values())
    return jsonify(status="ok" if healthy else "unavailable", **checks), 200 if healthy else 503
