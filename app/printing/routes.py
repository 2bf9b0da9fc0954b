"""PDF downloads."""

from __future__ import annotations

from flask import abort

from app.intake.access import visible_request
from app.printing import bp


@bp.route("/requests/<call_ref>/form.pdf")
def form_pdf(call_ref: str):
    """The completed form, laid out like its appendix."""
    visible_request(call_ref)
    abort(404)


@bp.route("/requests/<call_ref>/label.pdf")
def label_pdf(call_ref: str):
    """CD envelope label and one label per CD (CD requests only)."""
    visible_request(call_ref)
    abort(404)
