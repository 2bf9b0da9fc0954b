"""The request desk: the three forms, call references, request pages."""

from flask import Blueprint

bp = Blueprint("intake", __name__)

from app.intake import routes  # noqa: E402,F401
