"""The PAS register upload (issue 14.3): upload an extract, see the preview with its bad
lines named, then apply it; the last applied extract's facts on the page.

    GET  /admin/pas            the page: the last applied extract, the upload form, this session's upload
    POST /admin/pas/upload     a file in: kept, and its check queued (the preview)
    GET  /admin/pas/extract    this session's upload as the page shows it (htmx polls it while a job runs)
    POST /admin/pas/apply      Apply, confirmed: the apply of exactly the previewed file queued

The checking and applying happen on the worker pool (app/patients/extracts.py). The session
holds the token of its own upload; Apply must name that token.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import redirect, render_template, request, session, url_for
from flask_login import current_user

from app import htmx
from app.admin import bp
from app.auth.guard import roles_required
from app.auth.models import Role
from app.extensions import db
from app.patients import extracts
from app.patients.models import PasExtract, Patient
from app.patients.pas import COLUMNS

SESSION_KEY = "pas_extract"


def _this_sessions_upload() -> PasExtract | None:
    return extracts.current(session.get(SESSION_KEY), current_user.id)


def _context(**extra: object) -> dict[str, object]:
    extract = _this_sessions_upload()
    return {"extract": extract, "preview": extracts.preview_of(extract) if extract else None,
            "last": extracts.last_applied(), "columns": COLUMNS, "max_mb": extracts.MAX_EXTRACT_BYTES // 1024**2,
            "PasExtract": PasExtract, **extra}


def _page(status: int = 200, **extra: object):  # noqa: ANN202
    registered = db.session.scalar(sa.select(sa.func.count()).select_from(Patient)) or 0
    return render_template("admin/pasup.html", registered=registered, **_context(**extra)), status


@bp.route("/pas")
@roles_required(Role.ADMIN)
def pas():
    """The PAS register page: the last extract applied, an upload form, this session's upload."""
    return _page()


@bp.route("/pas/upload", methods=["POST"])
@roles_required(Role.ADMIN)
def pas_upload():
    """Keep an uploaded extract and queue its check; a file refused as a whole says why (422)."""
    upload = request.files.get("extract")
    if upload is None or not upload.filename:
        return _page(422, upload_error="Choose the PAS extract to upload: a CSV file.")
    # One byte past the limit is enough to know it is too big.
    data = upload.stream.read(extracts.MAX_EXTRACT_BYTES + 1)
    try:
        extract = extracts.receive(data, upload.filename, current_user.id, current_user.email)
    except extracts.ExtractRefused as refused:
        return _page(refused.status, upload_error=refused.message, file_name=upload.filename)
    session[SESSION_KEY] = extract.token
    return redirect(url_for("admin.pas"), 303)


@bp.route("/pas/extract")
@roles_required(Role.ADMIN)
def pas_extract():
    """This session's upload: progress while a job runs, then its preview or its result."""
    if not htmx.is_htmx():
        return redirect(url_for("admin.pas"))
    return render_template("admin/_pasup_extract.html", oob=True, **_context())


@bp.route("/pas/apply", methods=["POST"])
@roles_required(Role.ADMIN)
def pas_apply():
    """Apply this session's previewed extract, once confirmed; a stale or foreign one is refused."""
    try:
        extracts.request_apply(request.form.get("token"), session.get(SESSION_KEY), current_user.id,
                               confirmed=request.form.get("confirm") == "yes")
    except extracts.ExtractRefused as refused:
        return _page(refused.status, apply_error=refused.message)
    return redirect(url_for("admin.pas"), 303)
