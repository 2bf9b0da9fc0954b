"""Printables: completed forms and CD labels as PDF (WeasyPrint)."""

from flask import Blueprint

bp = Blueprint("printing", __name__)

from app.printing import routes  # noqa: E402,F401
