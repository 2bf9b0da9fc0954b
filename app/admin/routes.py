"""The admin home: one page that links every part of the administration (issue 14.8)."""

from __future__ import annotations

from flask import current_app, render_template

from app.admin import SECTIONS, bp
from app.auth.guard import roles_required
from app.auth.models import Role


@bp.route("/")
@roles_required(Role.ADMIN)
def home():
    """The admin's start page: each part of the administration, one link each."""
    sections = [s for s in SECTIONS if s.endpoint in current_app.view_functions]
    return render_template("admin/home.html", sections=sections)
