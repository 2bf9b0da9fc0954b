"""Transfer pages: node register, PACS search and export, imports, progress widgets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date

import sqlalchemy as sa
from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from markupsafe import escape
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from app import audit, htmx
from app.auth.guard import roles_required
from app.auth.models import DESK_ROLES, Role
from app.dicom import scu
from app.dicom.errors import DicomFailure
from app.extensions import db
from app.ids import parse_id
from app.requests.access import visible_request
from app.requests.models import Institution, Request
from app.requests.statuses import Kind
from app.timeutil import as_local, utcnow
from app.transfers import service
from app.transfers.inbound import settle
from app.transfers.models import DicomNode, Direction, InboundStudy, NodeRole, Transfer, TransferState
from app.transfers.nodes import NODE_FIELDS, NodeValues, register_node, set_node_active, transfers_using
from app.transfers.nodes import delete_node as delete_unused_node
from app.transfers.panel import search_applies
from app.transfers.quarantine import refused_arrivals, refused_files
from app.transfers.search import StudyFilters, find_patient_studies, propose

bp = Blueprint("transfers", __name__)
log = logging.getLogger("iep.transfers")

DESK = tuple(DESK_ROLES)
NODE_ADMINS = (Role.AM_RADIOLOGY, Role.ADMIN)
REFUSED_SHOWN = 200  # newest refused files listed on Arrivals; the count covers them all


def _nodes(*roles: NodeRole) -> list[DicomNode]:
    stmt = sa.select(DicomNode).where(DicomNode.active).order_by(DicomNode.name)
    if roles:
        stmt = stmt.where(DicomNode.role.in_([r.value for r in roles]))
    return list(db.session.scalars(stmt))


# --- Node register ---------------------------------------------------------------------------


def _node_values() -> NodeValues:
    """The register form as posted (an unticked box is not posted: no C-GET)."""
    typed = {k: (request.form.get(k) or "").strip() for k in NODE_FIELDS}
    return NodeValues(**typed, supports_get=bool(request.form.get("supports_get")))


def _institution_names() -> list[str]:
    """The register's active institutions, for the node form's list."""
    return list(db.session.scalars(sa.select(Institution.name).where(Institution.active).order_by(Institution.name)))


def _local_pacs_warning(was_local_pacs: bool) -> None:
    """Say so when a change leaves LOCAL_PACS_NODE naming no active node: imports cannot be
    downloaded to PACS until one does."""
    if was_local_pacs and service.local_pacs() is None:
        flash(f"No active node is now named (or has the AE title) {service.settings().local_pacs_node}, the "
              "LOCAL_PACS_NODE setting: imports cannot be downloaded to PACS until one is.", "error")


@bp.route("/admin/nodes", methods=["GET", "POST"])
@roles_required(*NODE_ADMINS)
def nodes():
    """The DICOM node register, active and deactivated, with a form to add one."""
    values = _node_values() if request.method == "POST" else NodeValues(role=NodeRole.REMOTE.value)
    errors = register_node(values) if request.method == "POST" else {}
    if request.method == "POST" and not errors:
        db.session.commit()
        flash(f"Node {values.name} saved.", "success")
        return redirect(url_for("transfers.nodes"))
    everyone = list(db.session.scalars(sa.select(DicomNode).order_by(DicomNode.active.desc(), DicomNode.name)))
    return render_template("transfers/nodes.html", nodes=everyone, roles=list(NodeRole), errors=errors,
                           values=values, institutions=_institution_names()), (422 if errors else 200)


def _node(node_id: int) -> DicomNode:
    """The node with that id; aborts 404 when there is none."""
    return db.session.get(DicomNode, node_id) or abort(404)


@bp.route("/admin/nodes/<int:node_id>/edit", methods=["GET", "POST"])
@roles_required(*NODE_ADMINS)
def edit_node(node_id: int):
    """One node's settings, prefilled, its name included."""
    node = _node(node_id)
    errors: dict[str, str] = {}
    if request.method == "POST":
        was_local_pacs = service.local_pacs() is node
        values = _node_values()
        errors = register_node(values, node)
        if not errors:
            db.session.commit()
            flash(f"Node {node.name} saved.", "success")
            _local_pacs_warning(was_local_pacs)
            return redirect(url_for("transfers.nodes"))
    else:
        values = NodeValues(name=node.name, ae_title=node.ae_title, host=node.host, port=str(node.port),
                            role=node.role, institution=node.institution.name if node.institution else "",
                            supports_get=node.supports_get)
    return render_template("transfers/node_edit.html", node=node, roles=list(NodeRole), errors=errors,
                           values=values, institutions=_institution_names(),
                           using=transfers_using(node)), (422 if errors else 200)


@bp.route("/admin/nodes/<int:node_id>/active", methods=["POST"])
@roles_required(*NODE_ADMINS)
def node_active(node_id: int):
    """Deactivate a node (no longer offered for new transfers) or reactivate it."""
    node = _node(node_id)
    wanted = request.form.get("active")
    if wanted not in ("0", "1"):
        abort(400, description="Say whether the node is to be active (1) or not (0).")
    was_local_pacs = service.local_pacs() is node
    set_node_active(node, wanted == "1")
    db.session.commit()
    flash(f"Node {node.name} reactivated." if node.active else f"Node {node.name} deactivated: it is no longer "
          "offered for new transfers; past transfers still show it.", "success")
    _local_pacs_warning(was_local_pacs)
    return redirect(url_for("transfers.nodes"))


@bp.route("/admin/nodes/<int:node_id>/delete", methods=["GET", "POST"])
@roles_required(*NODE_ADMINS)
def delete_node(node_id: int):
    """Delete a node nothing refers to, after a confirmation page; one transfers refer to
    is refused (deactivate it instead)."""
    node = _node(node_id)
    using = transfers_using(node)
    if request.method == "POST" and not using:
        name, was_local_pacs = node.name, service.local_pacs() is node
        delete_unused_node(node)
        db.session.commit()
        flash(f"Node {name} deleted.", "success")
        _local_pacs_warning(was_local_pacs)
        return redirect(url_for("transfers.nodes"))
    return render_template("transfers/node_delete.html", node=node, using=using), (
        409 if using and request.method == "POST" else 200)


@bp.route("/admin/nodes/<int:node_id>/echo", methods=["POST"])
@roles_required(*DESK)
def echo(node_id: int):
    """The "Test" button: C-ECHO the node and show the answer."""
    node = db.session.get(DicomNode, node_id) or abort(404)
    try:
        ms = scu.echo(service.as_node(node), config=service.ae_config())
        node.last_echo_result = f"Answered in {ms:.0f} ms"
    except DicomFailure as failure:
        node.last_echo_result = f"No: {failure.plain}"
    node.last_echo_at = utcnow()
    db.session.commit()
    if htmx.is_htmx():
        return render_template("transfers/_echo.html", node=node)
    flash(f"{node.name}: {node.last_echo_result}", "info")
    return redirect(url_for("transfers.nodes"))


# --- Export: search the PACS, choose studies, send --------------------------------------------


def _search_form() -> dict[str, str]:
    return {k: (request.form.get(k) or "").strip() for k in
            ("node_id", "date_from", "date_to", "description", "modality", "accession")}


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


@bp.route("/requests/<call_ref>/pacs-search", methods=["POST"])
@roles_required(*DESK)
def pacs_search(call_ref: str):
    """C-FIND the chosen node for this patient's studies: one search, merged by study."""
    req = visible_request(call_ref)
    if not search_applies(req):
        return render_template("transfers/_search_results.html", req=req, studies=[], node=None, form={},
                               error="A CD import's images come from its CDs: upload them on this page. "
                                     "The PACS search does not apply to it."), 409
    form = _search_form()
    node_id = parse_id(form["node_id"])
    node = db.session.get(DicomNode, node_id) if node_id is not None else service.local_pacs()
    studies, error = [], ""
    if node is None:
        error = "No node to search: add the local PACS in the node register."
    else:
        filters = StudyFilters(date_from=_date(form["date_from"]), date_to=_date(form["date_to"]),
                               modality=form["modality"], description=form["description"], accession=form["accession"])
        try:
            studies = find_patient_studies(node, req, filters)
        except DicomFailure as failure:
            error = f"The search on {node.name} failed: {failure.plain}"
    audit.record(audit.Action.VIEW, request_id=req.id, detail=f"{req.call_ref} PACS search")
    db.session.commit()
    return render_template("transfers/_search_results.html", req=req, studies=studies, error=error, node=node,
                           destinations=_nodes(NodeRole.REMOTE, NodeRole.GATEWAY), form=form,
                           proposal=propose(req, studies))


def _to_request_page(call_ref: str, anchor: str = "transfers") -> Response:
    """Back to the request page at `anchor`; an HTMX request is sent there with HX-Redirect
    (a 302 would be swapped into the element that asked, PITFALLS "Web")."""
    return htmx.redirect_to(url_for("intake.show", call_ref=call_ref) + f"#{anchor}")


_STATE_WORDS = {
    TransferState.QUEUED: "queued",
    TransferState.RUNNING: "running",
    TransferState.VERIFYING: "verifying",
    TransferState.WAITING_CONFIRMATION: "waiting for the analyst to confirm the patient",
}


def _under_way(call_ref: str, transfer: Transfer) -> Response:
    """Show the analyst the transfer a second press would have repeated, at its widget."""
    if transfer.direction == Direction.OUTBOUND:
        where = transfer.dest_node.name if transfer.dest_node else "its destination"
    elif transfer.direction == Direction.INBOUND:
        where = f"PACS ({transfer.dest_node.name})" if transfer.dest_node else "PACS"
    else:
        where = "the gateway"
    state = _STATE_WORDS.get(transfer.state, transfer.state)
    flash(f"Transfer {transfer.id} of these studies to {where} is already running (state: {state}); "
          "nothing new was started.", "info")
    return _to_request_page(call_ref, f"transfer-{transfer.id}")


def _create_once(
    req: Request, direction: Direction, dest: DicomNode | None, uids: list[str], create: Callable[[], Transfer]
) -> Transfer | Response:
    """Run `create` (create_transfer and what goes with it) and commit: the new transfer,
    or, when a transfer of these studies is already under way (found first, or made by a
    press at the same instant), the answer that shows it. Never half a status change.

    A simultaneous press loses at the partial unique index (IntegrityError) or at the
    request's version check (StaleDataError): roll back everything, then look again.
    """
    call_ref, request_id, dest_id = req.call_ref, req.id, dest.id if dest is not None else None
    try:
        transfer = create()
        db.session.commit()
        return transfer
    except service.TransferUnderWay as under_way:
        db.session.rollback()
        return _under_way(call_ref, under_way.transfer)
    except (IntegrityError, StaleDataError) as exc:
        db.session.rollback()
        log.info("%s: transfer not started, lost a race (%s)", call_ref, type(exc).__name__)
    fresh = db.session.get(Request, request_id)
    fresh_dest = db.session.get(DicomNode, dest_id) if dest_id is not None else None
    twin = service.unfinished_twin(fresh, direction, fresh_dest, uids) if fresh is not None else None
    if twin is not None:
        return _under_way(call_ref, twin)
    flash("Someone changed this request at the same moment, so nothing was started. "
          "Check the request and try again.", "error")
    return _to_request_page(call_ref)


def _flash_queued(transfer: Transfer, job_id: str | None, what: str) -> None:
    """Say what Send did, as it is (issue 11.16): queued; or saved, and when it starts (a
    Batch transfer outside its window); or saved with the queue down, for the dispatcher
    and the reconciler to queue when Redis is back. Never "queued" with no job."""
    if job_id or transfer.job_id:  # ours, or the dispatcher's that beat us to it
        flash(f"{what} queued.", "success")
        return
    when = service.next_run_at(transfer)
    if when is not None:
        local = as_local(when)
        day = "today" if local.date() == as_local(utcnow()).date() else f"on {local:%d/%m/%Y}"
        flash(f"{what} saved. It is a Batch transfer: it starts when the overnight window opens, "
              f"at {local:%H:%M} {day}.", "success")
        return
    flash(f"{what} saved, but not queued: the transfer queue is not answering. It starts by itself "
          "when the queue is back; nothing needs pressing again.", "warning")


@bp.route("/requests/<call_ref>/transfers", methods=["POST"])
@roles_required(*DESK)
def start(call_ref: str):
    """Start an export (selected studies -> destination) or a direct pull (-> gateway),
    unless a transfer of the same studies to the same place is still under way."""
    req = visible_request(call_ref)
    upload = request.files.get("report_pdf")
    values = service.StartValues(
        study_uids=tuple(request.form.getlist("study_uid")), source_id=parse_id(request.form.get("source_id")),
        dest_id=parse_id(request.form.get("dest_id")), priority=request.form.get("priority") or "",
        report_text=request.form.get("report_text") or "",
        report_pdf=upload.read(service.MAX_REPORT_BYTES + 1) if upload is not None and upload.filename else None,
    )
    try:
        plan = service.plan_start(req, values)
    except service.StartRefused as refusal:
        if htmx.is_htmx():  # said beside the button: the ticks, the report and the file stay
            return Response(escape(str(refusal)), status=422, mimetype="text/html")
        flash(str(refusal), "error")
        return _to_request_page(req.call_ref)
    transfer = _create_once(req, plan.direction, plan.dest, plan.study_uids,
                            lambda: service.start_transfer(req, plan, current_user.id))
    if not isinstance(transfer, Transfer):
        service.discard_report(plan)  # the transfer under way has its own
        return transfer
    job_id = service.enqueue(transfer, seen_job_id="")  # made just now, with no job
    n = len(plan.study_uids)
    _flash_queued(transfer, job_id, f"Transfer of {n} stud{'y' if n == 1 else 'ies'}")
    return _to_request_page(req.call_ref, f"transfer-{transfer.id}")


# --- Import: download what arrived to PACS ----------------------------------------------------


@bp.route("/requests/<call_ref>/import", methods=["POST"])
@roles_required(*DESK)
def download_to_pacs(call_ref: str):
    """"Download to PACS": fix up, store to the local PACS, RIS entries, Delivered
    (unless a download of the same studies is still under way)."""
    req = visible_request(call_ref)
    try:
        plan = service.plan_download(req, again=request.form.get("again") == "1",
                                     partial=request.form.get("partial") == "1")
    except service.StartRefused as refusal:
        flash(str(refusal), "error")
        return _to_request_page(req.call_ref)
    transfer = _create_once(req, Direction.INBOUND, plan.pacs, plan.study_uids,
                            lambda: service.start_download(req, plan, current_user.id))
    if not isinstance(transfer, Transfer):
        return transfer
    job_id = service.enqueue(transfer, seen_job_id="")  # made just now, with no job
    _flash_queued(transfer, job_id, "Download to PACS")
    return _to_request_page(req.call_ref, f"transfer-{transfer.id}")


# --- One transfer: live widget, retry, cancel, confirm -------------------------------------------


def _transfer(transfer_id: int) -> Transfer:
    transfer = db.session.get(Transfer, transfer_id) or abort(404)
    if transfer.request is not None:
        visible_request(transfer.request.call_ref)
    elif not current_user.is_desk:
        abort(403)
    return transfer


@bp.route("/transfers/<int:transfer_id>")
def widget(transfer_id: int):
    """The progress widget: re-polls itself while the transfer runs."""
    return render_template("transfers/_widget.html", t=_transfer(transfer_id))


@bp.route("/transfers/<int:transfer_id>/<action>", methods=["POST"])
@roles_required(*DESK)
def act(transfer_id: int, action: str):
    """Retry, Cancel, or confirm an import whose details differ from the register."""
    transfer = _transfer(transfer_id)
    ref = transfer.request.call_ref if transfer.request else ""
    seen_job_id = transfer.job_id  # before the commit, which reloads it (service.enqueue)
    try:
        service.act_on(transfer, action, current_user.id)
        db.session.commit()
    except service.ActionRefused:
        abort(409)
    except service.TransferUnderWay as under_way:  # a new Send of the same studies: that one, not two
        return _under_way(ref, under_way.transfer)
    except (IntegrityError, StaleDataError):
        db.session.rollback()
        if action != "retry":
            raise
        return _retry_lost_race(transfer_id)  # a press at the same instant won
    if action != "cancel":
        service.enqueue(transfer, seen_job_id=seen_job_id)
    if htmx.is_htmx():
        return render_template("transfers/_widget.html", t=transfer)
    return redirect(url_for("intake.show", call_ref=ref) + "#transfers" if ref else url_for("desk.queue"))


def _retry_lost_race(transfer_id: int) -> Response:
    """After a Retry lost to a press at the same instant: show the transfer that won, or
    say to look again; 409 (abort) for a transfer of no request."""
    fresh = db.session.get(Transfer, transfer_id)
    if fresh is None or fresh.request is None:
        abort(409)
    twin = service.unfinished_twin(fresh.request, fresh.direction, fresh.dest_node, fresh.study_uids)
    if twin is not None:
        return _under_way(fresh.request.call_ref, twin)
    flash("Someone changed this request at the same moment; check it and try again.", "error")
    return _to_request_page(fresh.request.call_ref)


@bp.route("/desk/arrivals", methods=["GET", "POST"])
@roles_required(*DESK)
def arrivals():
    """Studies on the gateway that match no request (match one by call reference), and
    the instances the gateway refused."""
    if request.method == "POST":
        study_id = parse_id(request.form.get("study_id"))
        study = (db.session.get(InboundStudy, study_id) if study_id is not None else None) or abort(404)
        call_ref = (request.form.get("call_ref") or "").strip().upper()
        req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
        if req is None or req.kind != Kind.IMPORT:
            flash("No import request has that call reference.", "error")
        else:
            study.request = req
            audit.record(audit.Action.EDIT, request_id=req.id, detail=f"{req.call_ref} matched to arrived study")
            settle(study, commit=False, actor_id=current_user.id)  # On IEP once the study is complete (issue 8.3)
            db.session.commit()  # one commit: the match, its audit entry and the On IEP together
            flash(f"Matched to {req.call_ref}.", "success")
        return redirect(url_for("transfers.arrivals"))
    studies = list(db.session.scalars(sa.select(InboundStudy).where(
        InboundStudy.request_id.is_(None), InboundStudy.purged_at.is_(None)).order_by(InboundStudy.received_at.desc())))
    return render_template("transfers/arrivals.html", studies=studies, refused=refused_files(REFUSED_SHOWN),
                           refused_total=refused_arrivals(), refused_shown=REFUSED_SHOWN)
