"""What a CD holds, as the worker's scan found it, and the desk's "send to PACS".

The fragment re-polls itself while the scan runs (the counts move live); once scanned it
shows each patient on the CD beside the PAS register, every study with its series and
counts, and every file the desk would not take with its reason. Desk roles tick the
studies and send them; a refusal keeps their ticks.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, flash, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app import audit, htmx
from app.auth.guard import roles_required
from app.auth.models import DESK_ROLES
from app.cds import jobs as cd_jobs
from app.cds import send
from app.cds.models import CdUpload, CdUploadState
from app.cds.routes import upload_of
from app.extensions import db
from app.requests.access import visible_request
from app.timeutil import utcnow
from app.transfers import service

bp = Blueprint("cdreview", __name__)
log = logging.getLogger("iep.cds")


def _to_request_page(call_ref: str, anchor: str) -> Response:
    """Back to the request page (where the flash message shows). For htmx without the
    anchor: a location that differs from the page only by its #fragment would make the
    browser scroll instead of loading the page, and the message would never show."""
    url = url_for("intake.show", call_ref=call_ref)
    return htmx.redirect_to(url if htmx.is_htmx() else f"{url}#{anchor}")


def _upload(call_ref: str, upload_id: int) -> CdUpload:
    """The upload, if the signed-in user may see its request (404/403 otherwise)."""
    return upload_of(visible_request(call_ref), upload_id)


def dicom_date(text: str) -> str:
    """YYYYMMDD as people read it (dd/mm/yyyy); anything else as it is."""
    text = (text or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[6:8]}/{text[4:6]}/{text[0:4]}"
    return text or "—"


def person_name(pn: str) -> str:
    """A DICOM name (SMITH^MARGARET^ANN) as people read it: SMITH, Margaret Ann."""
    first = (pn or "").split("=")[0]
    parts = [p.strip() for p in first.split("^")]
    family, given = parts[0] if parts else "", " ".join(p for p in parts[1:3] if p)
    if not family and not given:
        return pn or "—"
    return f"{family.upper()}, {given.title()}" if given else family.upper()


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    return {"cd_review": send.review, "dicom_date": dicom_date, "person_name": person_name}


def _render(upload: CdUpload, *, status: int = 200, ticked: set[str] | None = None, error: str = "",
            confirmed: bool = False) -> Response:
    """The fragment for htmx (200, or htmx would not swap a refusal in), else the page."""
    return htmx.render("cds/scan_page.html", "cds/_scan.html", status=200 if htmx.is_htmx() else status,
                       cd_upload=upload, req=upload.request, ticked=ticked, send_error=error, confirmed=confirmed)


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>/scan")
def scan(call_ref: str, upload_id: int):
    """The scan's progress, then its result (a fragment that polls itself while scanning)."""
    upload = _upload(call_ref, upload_id)
    if not htmx.is_poll():
        audit.record(audit.Action.VIEW, request_id=upload.request_id,
                     detail=f"{upload.request.call_ref} CD upload {upload.id} scan result")
        db.session.commit()
    return _render(upload)


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>/send", methods=["POST"])
@roles_required(*DESK_ROLES)
def send_to_pacs(call_ref: str, upload_id: int):
    """Send the ticked studies to the local PACS through the import path."""
    upload = _upload(call_ref, upload_id)
    uids = request.form.getlist("study_uid")
    confirmed = request.form.get("confirm_patient") == "1"
    try:
        plan = send.plan_send(upload, uids, confirmed)
    except send.SendRefused as refusal:
        return _render(upload, status=422, ticked=set(uids), error=str(refusal), confirmed=confirmed)
    req_ref = upload.request.call_ref
    try:
        transfer = send.start_send(upload, plan, current_user.id)
        db.session.commit()
    except service.TransferUnderWay as under_way:
        db.session.rollback()
        flash(f"Transfer {under_way.transfer.id} of these studies to PACS is already under way; nothing new "
              "was started.", "info")
        return _to_request_page(req_ref, f"transfer-{under_way.transfer.id}")
    except (IntegrityError, StaleDataError) as exc:
        db.session.rollback()
        log.info("%s: CD send not started, lost a race (%s)", req_ref, type(exc).__name__)
        flash("Someone changed this request at the same moment, so nothing was sent. Check it and try again.",
              "error")
        return _to_request_page(req_ref, "cd-panel")
    job_id = service.enqueue(transfer, seen_job_id="")
    n = len(plan.study_uids)
    what = f"Sending {n} stud{'y' if n == 1 else 'ies'} from the CD to PACS"
    if job_id or transfer.job_id:
        flash(f"{what}: queued.", "success")
    else:
        flash(f"{what}: saved, but not queued: the transfer queue is not answering. It starts by itself when the "
              "queue is back; nothing needs pressing again.", "warning")
    return _to_request_page(req_ref, f"transfer-{transfer.id}")


@bp.route("/requests/<call_ref>/cd-upload/<int:upload_id>/rescan", methods=["POST"])
@roles_required(*DESK_ROLES)
def rescan(call_ref: str, upload_id: int):
    """Scan a CD again after a scan that failed (the files are still here)."""
    upload = _upload(call_ref, upload_id)
    if upload.state != CdUploadState.FAILED:
        flash("Only a CD whose scan failed is scanned again.", "error")
        return _to_request_page(upload.request.call_ref, "cd-panel")
    upload.state, upload.error, upload.scan_done, upload.scan_json = CdUploadState.SCANNING, "", 0, ""
    upload.updated_at = utcnow()
    audit.record(audit.Action.CD_UPLOAD, request_id=upload.request_id,
                 detail=f"{upload.request.call_ref} CD upload {upload.id} scanned again")
    db.session.commit()
    if cd_jobs.queue_scan(upload):
        flash("The CD is being scanned again.", "success")
    else:
        flash("The scan is saved but not queued: the queue is not answering. It starts by itself when the queue "
              "is back.", "warning")
    return _to_request_page(upload.request.call_ref, "cd-panel")
