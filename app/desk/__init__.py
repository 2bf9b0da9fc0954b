"""The analyst workbench: the live queue at /desk."""

from flask import Blueprint

bp = Blueprint("desk", __name__)

from app.desk import routes  # noqa: E402,F401
