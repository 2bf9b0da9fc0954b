"""`/trauma`: the on-call radiologist's one screen for a trauma transfer to Nottingham
(guideline 2.8, Appendix 4), open at every hour, and its live tracker.

The screen is one form posted step by step (`action`): find the patient, check it is the
right patient, tick studies (filters re-ask the PACS), check the report, send. Each step
is checked again on the server; nothing is saved until Send. Patient identifiers are
POSTed, never put in a URL (PITFALLS "Web").
"""

from __future__ import annotations

import logging
import re
import uuid

import sqlalchemy as sa
from flask import Blueprint, abort, redirect, request, url_for
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from app import audit, htmx
from app.auth.guard import roles_required
from app.auth.models import Role
from app.dicom.errors import DicomFailure
from app.extensions import db
from app.requests.access import visible_request
from app.requests.models import Request
from app.requests.statuses import Kind
from app.timeutil import utcnow
from app.transfers import service as transfers
from app.trauma import service
from app.trauma.forms import TraumaForm
from app.workflow.hours import desk_status

bp = Blueprint("trauma", __name__)
log = logging.getLogger("iep.trauma")

TRAUMA_ROLES = (Role.RADIOLOGIST, Role.ADMIN)
RECENT = 10  # the radiologist's own latest trauma requests, listed under the screen
ACTIONS = ("find", "confirm", "filter", "review", "send")
_KEY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # a uuid4 the review made


def _recent() -> list[Request]:
    return list(db.session.scalars(
        sa.select(Request).where(Request.requester_id == current_user.id, Request.kind == Kind.TRAUMA)
        .order_by(Request.created_at.desc(), Request.id.desc()).limit(RECENT)))


def _screen(form: TraumaForm, stage: str, status: int = 200, **context: object):  # noqa: ANN202
    dest = service.destination()
    return htmx.render(
        "trauma/page.html", "trauma/_flow.html", status=status, form=form, stage=stage, dest=dest,
        dest_missing=dest is None, trauma_node=transfers.settings().trauma_node, hours=desk_status(utcnow()),
        recent=_recent() if not htmx.is_htmx() else [], **context,
    )


def _ticked(listed: list[service.PickedStudy]) -> list[service.PickedStudy]:
    wanted = set(request.form.getlist("study_uid"))
    return [s for s in listed if s.study_uid in wanted]


@bp.route("/trauma", methods=["GET", "POST"])
@roles_required(*TRAUMA_ROLES)
def page():
    """The trauma screen, one step per POST (see the module's docstring)."""
    form = TraumaForm()
    action = request.form.get("action", "") if request.method == "POST" else ""
    if not action:
        return _screen(form, "find")
    if action not in ACTIONS:
        abort(400)
    if not form.check_patient():
        return _screen(form, "find", 422)
    patient = form.patient
    assert patient is not None  # noqa: S101 - check_patient() set it
    if action == "find":
        # Audited once a screen: the patient's record was shown (the internal id only).
        audit.record(audit.Action.VIEW, detail=f"trauma screen: patient record {patient.id} shown")
        db.session.commit()
        return _screen(form, "patient")
    if action != "confirm" and form.patient_checked.data != "1":
        return _screen(form, "patient", 422)  # step 10 comes first, whatever was posted
    if action in ("confirm", "filter"):
        return _studies_step(form, kept=request.form.getlist("study_uid"))
    listed = form.listed_studies()
    if listed is None:  # forged, too old, or made for another patient: list them afresh
        return _studies_step(form, kept=[], problems=["The list of studies was out of date, so it has been made "
                                                      "again: tick the studies again."])
    ticked = _ticked(listed)
    problems = []
    if not ticked:
        problems.append("Tick at least one study to send (only relevant imaging, Appendix 4 step 12).")
    if not form.report_ok():
        problems.extend(form.report_text.errors)
    if problems:
        return _studies_step(form, kept=[s.study_uid for s in ticked], problems=problems, status=422)
    if action == "send":
        return _send(form, ticked)
    form.submission_key.data = str(uuid.uuid4())  # review: one key per Send button shown
    form.report_checked.data = False
    return _review(form, ticked)


def _review(form: TraumaForm, ticked: list[service.PickedStudy], status: int = 200, **context: object):  # noqa: ANN202
    """Steps 13-16: what will be sent, the report shown back, and the one Send button."""
    report_study = request.form.get("report_study", "")
    if len(ticked) == 1:
        report_study = ticked[0].study_uid
    return _screen(form, "review", status, studies=ticked, report_study=report_study,
                   earlier=service.recent_sends([s.study_uid for s in ticked], utcnow()), **context)


def _studies_step(form: TraumaForm, *, kept: list[str], problems: list[str] | None = None, status: int = 200):  # noqa: ANN202
    """Steps 11-13: the local PACS's studies for the patient (ticks kept), the report box."""
    patient = form.patient
    assert patient is not None  # noqa: S101 - check_patient() set it
    filters = form.filters()
    previous = {s.study_uid: s for s in (form.listed_studies() or [])}
    studies: list[service.PickedStudy] = []
    error = ""
    try:
        studies = service.find_studies(patient, filters)
    except service.TraumaRefused as refused:
        error = str(refused)
    except DicomFailure as failure:
        error = f"The local PACS did not answer ({failure.plain.rstrip('.')})."
    shown = {s.study_uid for s in studies}
    # Ticked studies the filters now hide are still ticked: kept out of sight, and said so.
    hidden = [previous[uid] for uid in kept if uid in previous and uid not in shown]
    form.studies_token.data = service.seal(patient.s_number, studies + hidden)
    return _screen(form, "studies", 422 if problems else status, studies=studies, hidden=hidden, kept=set(kept),
                   error=error, problems=problems or [])


def _send(form: TraumaForm, ticked: list[service.PickedStudy]):  # noqa: ANN202
    """Step 16: the trauma request and its Blue Light transfer, in one commit; then the job."""
    key = form.submission_key.data or ""
    if not _KEY.fullmatch(key):  # not a key this screen made: show the check again, with one
        form.submission_key.data = str(uuid.uuid4())
        return _review(form, ticked, 422, refused="Check the details below, then press Send again.")
    earlier = service.already_sent(key, current_user)
    if earlier is not None:  # the same screen's Send again (a double click): the one it made
        return htmx.redirect_to(url_for("trauma.track", call_ref=earlier.call_ref))
    report = (form.report_text.data or "").strip()
    report_study = request.form.get("report_study", "") if len(ticked) > 1 else ticked[0].study_uid
    if report and not form.report_checked.data:
        form.report_checked.errors = ["Read the report shown above and tick the box to say it is the right one."]
    study_error = ""
    if report and report_study not in {s.study_uid for s in ticked}:
        study_error = "Choose the study the report is about."
    if service.recent_sends([s.study_uid for s in ticked], utcnow()) and not form.send_again.data:
        form.send_again.errors = ["These studies went to NUH in the last 24 hours: tick the box to send them again."]
    if form.report_checked.errors or form.send_again.errors or study_error:
        return _review(form, ticked, 422, study_error=study_error)
    values = service.TraumaValues(
        patient=form.patient, nhs_number=form.nhs_number.data, no_nhs_reason=form.no_nhs_reason.data or "",  # type: ignore[arg-type]  # check_patient() set it
        studies=tuple(ticked), report_text=report, report_study_uid=report_study if report else "",
        submission_key=key,
    )
    try:
        req, transfer = service.send(values, current_user)
        db.session.commit()
    except service.TraumaRefused as refused:
        db.session.rollback()
        return _review(form, ticked, 422, refused=str(refused))
    except IntegrityError:
        db.session.rollback()  # the same Send's other click won the race: show what it made
        earlier = service.already_sent(key, current_user)
        if earlier is None:
            raise
        return htmx.redirect_to(url_for("trauma.track", call_ref=earlier.call_ref))
    # No job (Redis down): the tracker says so; the dispatcher queues it when Redis is back.
    job_id = transfers.enqueue(transfer, seen_job_id="")  # made just now, with no job
    log.info("%s: trauma transfer %s %s", req.call_ref, transfer.id,
             "queued" if job_id or transfer.job_id else "saved, not queued (Redis did not answer)")
    return htmx.redirect_to(url_for("trauma.track", call_ref=req.call_ref))


def _trauma_request(call_ref: str) -> Request:
    req = visible_request(call_ref)
    if req.kind != Kind.TRAUMA:
        abort(404)
    return req


def _tracker(req: Request):  # noqa: ANN202
    transfer = service.trauma_transfer(req)
    return htmx.render("trauma/track.html", "trauma/_status.html", req=req, t=transfer,
                       outcome=service.outcome(transfer), took=service.seconds_taken(transfer),
                       failed_at=service.where_it_failed(transfer) if transfer and transfer.last_error else "",
                       studies=service.study_progress(req, transfer) if transfer else [])


@bp.route("/trauma/<call_ref>")
def track(call_ref: str):
    """Step 17: the trauma transfer, followed live until it is on NUH's PACS or failed."""
    req = _trauma_request(call_ref)
    audit.record(audit.Action.VIEW, request_id=req.id, detail=f"{req.call_ref} trauma tracker")
    db.session.commit()
    return _tracker(req)


@bp.route("/trauma/<call_ref>/status")
def status(call_ref: str):
    """The tracker's live part: polls itself every two seconds until the transfer ends."""
    req = _trauma_request(call_ref)
    if not htmx.is_htmx():
        return redirect(url_for("trauma.track", call_ref=req.call_ref))
    return _tracker(req)
