"""Starting, queueing, retrying and cancelling transfers (web side and jobs alike).

Enqueue -> job -> logic (STYLE habit 2): this module makes the rows and puts ids on RQ;
`jobs.run_transfer(transfer_id)` loads the row and runs `engine`; nothing here talks DICOM.
The web side's work comes in as plain values (`StartValues`, ids, strings). Nothing here
commits except `enqueue` (README "Layout" says why): the caller commits once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from flask import current_app
from pypdf import PdfReader
from redis.exceptions import RedisError
from sqlalchemy.orm.attributes import set_committed_value

from app import audit
from app.dicom.ae import AEConfig, Node, Timeouts
from app.dicom.fixup import parse_date
from app.extensions import db, rowcount
from app.queues import queue
from app.requests.models import Request
from app.requests.statuses import Kind, Priority, Status
from app.timeutil import LONDON, aware, utcnow
from app.transfers.lanes import in_window, next_window_start, queue_name
from app.transfers.models import (
    UNFINISHED_STATES,
    DicomNode,
    Direction,
    InboundStudy,
    Transfer,
    TransferItem,
    TransferState,
)
from app.workflow.machine import advance, transition

log = logging.getLogger("iep.transfers")

# An outer bound on every transfer job (PITFALLS: a stalled peer can freeze a C-GET).
JOB_TIMEOUT = 6 * 3600
# The Blue Light worker takes a job within seconds (its own lane, at the front): one not
# started after this long has no worker to take it (the pool or Redis is down).
BLUE_LIGHT_START = timedelta(seconds=60)


def settings():  # noqa: ANN201
    return current_app.config["IEP_SETTINGS"]


def ae_config() -> AEConfig:
    """How the desk presents itself: the gateway AE title, timeouts from settings."""
    seconds = float(settings().dicom_timeout_seconds)
    return AEConfig(
        ae_title=settings().gateway_ae_title,
        timeouts=Timeouts(connection=min(seconds, 10.0), acse=seconds, dimse=seconds * 2, network=seconds * 4),
    )


def as_node(node: DicomNode) -> Node:
    return Node(ae_title=node.ae_title, host=node.host, port=node.port)


def our_node() -> Node:
    return Node(ae_title=settings().gateway_ae_title, host="127.0.0.1", port=settings().gateway_port)


def gateway_store() -> Path:
    return settings().storage_root / "gateway" / "store"


def gateway_quarantine() -> Path:
    return settings().storage_root / "gateway" / "quarantine"


def staging_dir(transfer_id: int) -> Path:
    return settings().storage_root / "transfers" / str(transfer_id)


def local_pacs() -> DicomNode | None:
    name = settings().local_pacs_node
    return db.session.scalar(
        sa.select(DicomNode).where(sa.or_(DicomNode.name == name, DicomNode.ae_title == name), DicomNode.active)
    )


class TransferUnderWay(Exception):
    """A transfer of the same studies, same way, to the same place is not finished yet."""

    def __init__(self, transfer: Transfer) -> None:
        super().__init__(f"transfer {transfer.id} is {transfer.state}")
        self.transfer = transfer


def study_key(study_uids: list[str]) -> str:
    """The study set as a key: sha1 of the sorted, de-duplicated Study Instance UIDs."""
    return hashlib.sha1("\n".join(sorted(set(study_uids))).encode("utf-8"), usedforsecurity=False).hexdigest()


def unfinished_twin(
    request: Request, direction: Direction, dest: DicomNode | None, study_uids: list[str]
) -> Transfer | None:
    """The unfinished transfer this one would repeat (issue 8.8), if there is one."""
    return db.session.scalar(
        sa.select(Transfer).where(
            Transfer.request_id == request.id,
            Transfer.direction == direction,
            Transfer.dest_key == (dest.id if dest is not None else 0),
            Transfer.study_key == study_key(study_uids),
            Transfer.state.in_(UNFINISHED_STATES),
        )
    )


def create_transfer(
    *,
    request: Request | None,
    direction: Direction,
    priority: Priority,
    source: DicomNode | None,
    dest: DicomNode | None,
    study_uids: list[str],
    user_id: int | None,
    actor: str = "",
    report_text: str = "",
    report_pdf_path: str = "",
) -> Transfer:
    """A queued transfer row (the caller commits, then calls `enqueue`).

    Raises TransferUnderWay, changing nothing, when the request already has an unfinished
    transfer of this study set, this direction, to this destination. Two callers at the
    same instant both get past that check; the partial unique index
    `uq_transfers_one_unfinished` then refuses the second at the flush or the commit
    (IntegrityError), or its change of the request's status fails the version check
    (StaleDataError): the caller rolls back and looks again with `unfinished_twin`.
    """
    if request is not None and (twin := unfinished_twin(request, direction, dest, study_uids)) is not None:
        raise TransferUnderWay(twin)
    transfer = Transfer(
        request=request,
        direction=direction,
        priority=Priority(priority),
        source_node=source,
        dest_node=dest,
        study_uids=list(study_uids),
        study_key=study_key(study_uids),
        dest_key=dest.id if dest is not None else 0,
        max_attempts=settings().transfer_max_attempts,
        created_by_id=user_id,
        report_text=report_text,
        report_pdf_path=report_pdf_path,
        state=TransferState.QUEUED,
    )
    db.session.add(transfer)
    db.session.flush()
    if request is not None:
        if request.status == Status.NEW:
            transition(request, Status.ACCEPTED, actor_id=user_id, actor=actor)
        # A pull brings images to the gateway: the request goes straight to On IEP when
        # they arrive. Exports and downloads to PACS are queued downloads.
        if direction != Direction.PULL:
            advance(request, Status.DOWNLOAD_REQUEST, actor_id=user_id, actor=actor)
    return transfer


MAX_REPORT_BYTES = 10 * 1024 * 1024
_STUDY_UID = re.compile(r"[0-9.]{1,64}")


class StartRefused(Exception):
    """A Send that cannot start, in the analyst's words (nothing was changed)."""


@dataclass(frozen=True)
class StartValues:
    """The Send form as plain values. `report_pdf`: the uploaded report, read to at most
    MAX_REPORT_BYTES + 1 bytes, or None when no file was chosen."""

    study_uids: tuple[str, ...]
    source_id: int | None = None
    dest_id: int | None = None
    priority: str = ""
    report_text: str = ""
    report_pdf: bytes | None = None


@dataclass(frozen=True)
class StartPlan:
    """A checked Send: what `start_transfer` makes, and the stored report if any."""

    direction: Direction
    source: DicomNode
    dest: DicomNode | None
    study_uids: list[str]
    priority: Priority
    report_text: str
    report_pdf_path: str


def check_report_pdf(data: bytes) -> None:
    """Refuse an uploaded report the receiving PACS could not show: over the size limit,
    not a PDF, one pypdf cannot read (damaged, truncated), password-protected, or without
    pages. Raises StartRefused naming which."""
    if not data:
        raise StartRefused("The report file is empty: attach the report as a PDF.")
    if len(data) > MAX_REPORT_BYTES:
        raise StartRefused("The report PDF is larger than 10 MB: attach a smaller file.")
    if data.lstrip()[:5] != b"%PDF-":
        raise StartRefused("The report is not a PDF file: attach the report as a PDF.")
    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
        # Each page must resolve (its media box), not only be counted.
        pages = 0 if encrypted else sum(1 for page in reader.pages if page.mediabox is not None)
    except Exception as exc:  # noqa: BLE001 - a hostile file can make any parser error; none may be a 500
        log.info("report PDF refused: %s", type(exc).__name__)
        raise StartRefused(
            "The report PDF is damaged and cannot be read: attach it again, or paste the report.") from None
    if encrypted:
        raise StartRefused("The report PDF is password-protected: attach one that opens without a password.")
    if pages == 0:
        raise StartRefused("The report PDF has no pages: attach the report itself.")


def plan_start(request: Request, values: StartValues) -> StartPlan:
    """Check a Send for `request` (an export to a node, or for an import a pull to the
    gateway) and store its report PDF under a name of our own. Raises StartRefused with
    the first thing to put right; writes nothing to the database."""
    if request.kind == Kind.CD:  # its images come from the CD's scan, not from a node (DESIGN flow 3)
        raise StartRefused("A CD import's images come from its CDs: send them to PACS from the CD's scan "
                           "on this page.")
    uids = [u for u in values.study_uids if _STUDY_UID.fullmatch(u)]
    source = db.session.get(DicomNode, values.source_id or 0) or (
        local_pacs() if request.kind != Kind.IMPORT else None)
    if source is None:
        raise StartRefused("Choose the node to take the studies from.")
    priority = values.priority or request.priority.value
    if priority not in {p.value for p in Priority}:
        priority = request.priority.value
    if not uids:
        raise StartRefused("Tick at least one study to send.")
    if request.kind == Kind.IMPORT:
        direction, dest = Direction.PULL, None
    else:
        direction = Direction.OUTBOUND
        dest = db.session.get(DicomNode, values.dest_id or 0)
        if dest is None:
            raise StartRefused("Choose the destination node.")
    for node in (source, dest):  # issue 14.4: no longer offered, and not taken when posted either
        if node is not None and not node.active:
            raise StartRefused(f"{node.name} is deactivated in the node register: choose another node.")
    report_path = ""
    if values.report_pdf is not None:
        data = values.report_pdf
        check_report_pdf(data)
        folder = settings().storage_root / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}.pdf"  # never the uploaded name
        target.write_bytes(data)
        report_path = str(target)
    return StartPlan(direction=direction, source=source, dest=dest, study_uids=uids, priority=Priority(priority),
                     report_text=values.report_text.strip()[:20000], report_pdf_path=report_path)


def start_transfer(request: Request, plan: StartPlan, user_id: int) -> Transfer:
    """The transfer a checked Send makes, audited (`create_transfer`: raises
    TransferUnderWay). Never commits: the caller commits, then calls `enqueue`."""
    transfer = create_transfer(
        request=request, direction=plan.direction, priority=plan.priority, source=plan.source, dest=plan.dest,
        study_uids=plan.study_uids, user_id=user_id, report_text=plan.report_text,
        report_pdf_path=plan.report_pdf_path,
    )
    audit.record(audit.Action.TRANSFER, request_id=request.id,
                 detail=f"{request.call_ref} transfer {transfer.id} started")
    return transfer


def discard_report(plan: StartPlan) -> None:
    """Remove the report a Send stored when no transfer came of it."""
    if plan.report_pdf_path:
        Path(plan.report_pdf_path).unlink(missing_ok=True)


@dataclass(frozen=True)
class DownloadPlan:
    """A checked "Download to PACS": the arrived studies, the local PACS, and why it
    goes although incomplete (`blockers`, when the analyst chose to send what arrived)."""

    studies: list[InboundStudy]
    pacs: DicomNode
    study_uids: list[str]
    partial: bool
    blockers: list[str]
    again: bool


def plan_download(request: Request, *, again: bool, partial: bool) -> DownloadPlan:
    """Check "Download to PACS" for an import: something has arrived, the local PACS is
    registered, a second store is asked for (`again`), and (issue 8.3) the studies are
    complete unless the analyst chose to send what has arrived (`partial`). Raises
    StartRefused with the first thing to put right; changes nothing."""
    studies = list(db.session.scalars(sa.select(InboundStudy).where(
        InboundStudy.request_id == request.id, InboundStudy.purged_at.is_(None))))
    pacs = local_pacs()
    if not studies or pacs is None:
        raise StartRefused("Nothing to download: no images have arrived for this request." if not studies
                           else "The local PACS node is not in the node register.")
    if request.status in (Status.DELIVERED, Status.COMPLETED) and not again:
        raise StartRefused("These images are on PACS already: to store them a second time, tick the box by "
                           "“Send to PACS again”.")
    blockers = download_blockers(request, studies)
    partial = bool(blockers) and partial
    if blockers and not partial:
        raise StartRefused("Not downloaded to PACS: " + "; ".join(blockers) + ". Wait until the images are "
                           "complete, or choose “Send what has arrived”.")
    return DownloadPlan(studies=studies, pacs=pacs, study_uids=[s.study_uid for s in studies], partial=partial,
                        blockers=blockers, again=again)


def start_download(request: Request, plan: DownloadPlan, user_id: int) -> Transfer:
    """The import transfer a checked download makes, with its instance list, audited
    (`create_transfer`: raises TransferUnderWay). Never commits: the caller commits, then
    calls `enqueue`."""
    transfer = create_transfer(
        request=request, direction=Direction.INBOUND, priority=request.priority, source=None, dest=plan.pacs,
        study_uids=plan.study_uids, user_id=user_id,
    )
    transfer.partial_ok = plan.partial
    add_inbound_items(transfer, plan.studies)
    detail = f"{request.call_ref} import transfer {transfer.id}"
    if plan.partial:
        detail += " sending what has arrived although: " + "; ".join(plan.blockers)
    elif plan.again:
        detail += " sent to PACS again"
    audit.record(audit.Action.TRANSFER, request_id=request.id, detail=detail[:1000])
    return transfer


def add_inbound_items(transfer: Transfer, inbound: list[InboundStudy]) -> None:
    """List the gateway copies an import will send (one row per instance file)."""
    for study in inbound:
        for path in sorted(Path(study.folder).glob("*.dcm")):
            db.session.add(
                TransferItem(transfer_id=transfer.id, study_uid=study.study_uid, sop_uid=path.stem,
                             path=str(path), size=path.stat().st_size)
            )
    db.session.flush()
    totals = db.session.execute(
        sa.select(sa.func.count(TransferItem.id), sa.func.coalesce(sa.func.sum(TransferItem.size), 0)).where(
            TransferItem.transfer_id == transfer.id
        )
    ).one()
    transfer.instances_total, transfer.bytes_total = int(totals[0]), int(totals[1])


def blue_light_not_started() -> sa.ColumnElement[bool]:
    """SQL: a Blue Light transfer still waiting for its first run BLUE_LIGHT_START after
    it was made (the desk's Action Required; the trauma tracker says it in words). The
    deadline is a parameter computed when the statement runs, not when it is built: the
    desk keeps its built statements (app.desk.queries)."""
    deadline = sa.bindparam("blue_light_deadline", unique=True, type_=Transfer.created_at.type,
                            callable_=lambda: utcnow() - BLUE_LIGHT_START)
    return sa.and_(Transfer.priority == Priority.BLUE_LIGHT, Transfer.state == TransferState.QUEUED,
                   Transfer.attempts == 0, Transfer.created_at < deadline)


def is_due(transfer: Transfer, now: datetime | None = None) -> bool:
    """May this queued transfer run now? Not before its retry time (`not_before`), and a
    Batch transfer only inside the overnight window."""
    now = now or utcnow()
    if transfer.not_before is not None and aware(transfer.not_before) > now:
        return False
    return transfer.priority != Priority.BATCH or in_window(now, settings().batch_window)


def next_run_at(transfer: Transfer) -> datetime | None:
    """When a queued transfer that is not due yet will be started (for the widget)."""
    if transfer.state != TransferState.QUEUED or is_due(transfer):
        return None
    moment = aware(transfer.not_before) if transfer.not_before is not None else utcnow()
    if transfer.priority == Priority.BATCH:
        moment = next_window_start(max(moment, utcnow()), settings().batch_window)
    return moment


def enqueue(transfer: Transfer, *, seen_job_id: str) -> str | None:
    """The one way a transfer goes onto RQ: the web side, Retry, the reconciler and the
    dispatcher all call this. Returns the job id, or None when nothing was queued now.

    The database is the scheduler (issue 8.1): a transfer that is not due (waiting to
    retry, or Batch outside the overnight window) is NOT handed to RQ's scheduler — only
    a worker listening to the same queue would ever promote it. It stays queued with no
    job, and the pool's dispatcher (`jobs.dispatch_due`) enqueues it when it is due. If
    Redis is down, likewise: the dispatcher tries again a second later. Blue Light goes
    to the front of its own lane, first attempt or retry alike.

    Only one caller wins: the job id is claimed on the row (compare-and-set on the job id
    the caller saw), so two pools, or a dispatcher racing the reconciler, queue it once.
    `seen_job_id` is that id as the caller saw it when it decided the transfer needs a job
    ("" for a transfer it has just made, or one it selected for having none). Not the
    row's attribute: a commit since may have reloaded it with a job another caller has
    just queued, and claiming over that one would queue the transfer twice.

    Commits (the named exception to "services never commit", README "Layout"): the claim
    must be saved before RQ can hand the job to a worker, and it commits whatever else
    the session holds, so the caller commits its own work first.
    """
    from app.transfers.jobs import run_transfer

    if transfer.state != TransferState.QUEUED or transfer.cancel_requested:
        return None
    if not is_due(transfer):
        if transfer.job_id:
            transfer.job_id = ""
        if transfer.priority == Priority.BATCH and transfer.not_before is None:
            opens = next_window_start(utcnow(), settings().batch_window).astimezone(LONDON)
            transfer.phase = f"Batch: waits for the overnight window (opens {opens:%H:%M})"
        db.session.commit()
        return None
    seen = seen_job_id
    job_id = f"transfer-{transfer.id}-{uuid.uuid4().hex[:10]}"
    claimed = rowcount(db.session.execute(
        sa.update(Transfer)
        .where(Transfer.id == transfer.id, Transfer.state == TransferState.QUEUED, Transfer.job_id == seen)
        .values(job_id=job_id),
        execution_options={"synchronize_session": False},
    ))
    db.session.commit()
    if claimed != 1:
        db.session.refresh(transfer)
        return None  # someone else queued it (or it was cancelled) meanwhile
    # The row already says so: record it on the object without making it dirty (a pending
    # change here would open a write transaction at the caller's next query).
    set_committed_value(transfer, "job_id", job_id)
    try:
        queue(queue_name(transfer.direction, transfer.priority)).enqueue(
            run_transfer, transfer.id, job_id=job_id, job_timeout=JOB_TIMEOUT,
            at_front=transfer.priority == Priority.BLUE_LIGHT,
        )
    except RedisError as exc:
        log.warning("transfer %s not enqueued (%s); the dispatcher will retry", transfer.id, type(exc).__name__)
        db.session.execute(
            sa.update(Transfer).where(Transfer.id == transfer.id, Transfer.job_id == job_id).values(job_id=""),
            execution_options={"synchronize_session": False},
        )
        db.session.commit()
        db.session.refresh(transfer)
        return None
    return job_id


def arrival_state(study: InboundStudy, now: datetime | None = None) -> tuple[bool, str]:
    """(complete?, in words) for a study on the gateway (issue 8.3). Complete only when
    the desk has reason to know it: a pull checked every instance the remote listed, or
    the sender released its association and nothing has come since for the quiet period."""
    now = now or utcnow()
    count = f"{study.instances} instance{'' if study.instances == 1 else 's'}"
    if study.complete_at is not None:
        return True, f"complete: {count}, every one the sending node listed"
    last = aware(study.last_received_at)
    quiet = timedelta(seconds=settings().arrival_quiet_seconds)
    if study.sender_done_at is not None and aware(study.sender_done_at) >= last:
        if not study.sender_released:
            return False, (f"arriving: {count} so far; the sender's connection broke off at "
                           f"{last.astimezone(LONDON):%H:%M} (ask them to send it again)")
        if now - last >= quiet:
            finished = aware(study.sender_done_at).astimezone(LONDON)
            return True, f"complete: {count} (the sender finished at {finished:%H:%M})"
    return False, f"arriving: {count} so far (the last at {last.astimezone(LONDON):%H:%M:%S})"


def download_blockers(request: Request, studies: list[InboundStudy]) -> list[str]:
    """Why "Download to PACS" would send an incomplete study now (issue 8.3): a pull of
    these images still running or waiting to retry, instances known missing, or studies
    still arriving. Empty when it may go."""
    reasons = []
    pulls = list(db.session.scalars(sa.select(Transfer).where(
        Transfer.request_id == request.id, Transfer.direction == Direction.PULL).order_by(Transfer.id)))
    wanted = {s.study_uid for s in studies}
    for pull in pulls:
        if not wanted & set(pull.study_uids):
            continue
        source = pull.source_node.name if pull.source_node else "the other hospital"
        if pull.state in UNFINISHED_STATES:
            doing = "waiting to retry" if pull.state == TransferState.QUEUED and pull.attempts else pull.state
            reasons.append(f"transfer {pull.id} is still retrieving these images from {source} ({doing})")
        elif pull.state in (TransferState.FAILED, TransferState.CANCELLED):
            missing = db.session.scalar(sa.select(sa.func.count(TransferItem.id)).where(
                TransferItem.transfer_id == pull.id, TransferItem.path == ""))
            if missing:
                reasons.append(f"{missing} instance{'' if missing == 1 else 's'} that {source} listed never arrived "
                               f"(transfer {pull.id})")
    for study in studies:
        complete, words = arrival_state(study)
        if not complete:
            day = parse_date(study.study_date)
            when = f"{day:%d/%m/%Y}" if day else study.study_date or "unknown date"
            reasons.append(f"study of {when} {study.description}: {words}".strip())
    return reasons


def problem_items(transfer: Transfer, limit: int = 200) -> list[TransferItem]:
    """The instances that did not make it, each with its reason (issue 8.7): in series and
    instance order, as a person would look for them."""
    from app.transfers.engine import describe

    items = list(db.session.scalars(
        sa.select(TransferItem).where(TransferItem.transfer_id == transfer.id, TransferItem.error != "")
        .order_by(TransferItem.series_number, TransferItem.instance_number, TransferItem.id).limit(limit)))
    for item in items:
        if not (item.series_number or item.instance_number):
            describe(item)  # fills the names from the file's header where there is one
    return items


def problem_count(transfer: Transfer) -> int:
    return int(db.session.scalar(sa.select(sa.func.count(TransferItem.id)).where(
        TransferItem.transfer_id == transfer.id, TransferItem.error != "")) or 0)


def retry(transfer: Transfer, user_id: int) -> None:
    """Make a failed or cancelled transfer queued again: it resumes with what is not yet
    confirmed. Never commits: the caller commits, then calls `enqueue`. A press at the
    same instant shows at the commit (IntegrityError or StaleDataError)."""
    if transfer.state not in (TransferState.FAILED, TransferState.CANCELLED):
        raise ValueError("only a failed or cancelled transfer can be retried")
    transfer.state = TransferState.QUEUED
    transfer.attempts = 0
    transfer.last_error = ""
    transfer.cancel_requested = False
    transfer.stalled = False
    transfer.not_before = None
    if transfer.request is not None and transfer.request.status in (Status.FAILED, Status.PURGED):
        if transfer.request.status == Status.PURGED or transfer.direction == Direction.PULL:
            transition(transfer.request, Status.ACCEPTED, actor_id=user_id, note="Transfer retried.")
        else:
            advance(transfer.request, Status.DOWNLOAD_REQUEST, actor_id=user_id, note="Transfer retried.")


def cancel(transfer: Transfer) -> None:
    """Ask a transfer to stop between instances; a queued one, or one waiting for the
    analyst's confirmation, stops at once. Never commits."""
    transfer.cancel_requested = True
    if transfer.state in (TransferState.QUEUED, TransferState.WAITING_CONFIRMATION):
        transfer.state = TransferState.CANCELLED
        transfer.finished_at = utcnow()


def confirm_patient(transfer: Transfer) -> None:
    """The analyst has checked the patient of an import whose details differ from the
    register: queue it again, the difference accepted. Never commits: the caller
    commits, then calls `enqueue`."""
    if transfer.state != TransferState.WAITING_CONFIRMATION:
        raise ValueError("only a transfer waiting for confirmation can be confirmed")
    transfer.mismatch_accepted = True
    transfer.state = TransferState.QUEUED


class ActionRefused(Exception):
    """Retry, Cancel or Confirm does not apply to the transfer in its present state."""


ACTIONS = ("retry", "cancel", "confirm")


def act_on(transfer: Transfer, action: str, user_id: int) -> None:
    """The analyst's Retry, Cancel or Confirm on one transfer, audited. Never commits: the
    caller commits, then calls `enqueue` after a retry or a confirm.

    Raises ActionRefused, changing nothing, when the action does not apply to the
    transfer's state; TransferUnderWay when a retry would repeat a transfer of the same
    studies that is still under way (issue 8.8).
    """
    if action == "retry" and transfer.state in (TransferState.FAILED, TransferState.CANCELLED):
        req = transfer.request
        if req is not None and (twin := unfinished_twin(req, transfer.direction, transfer.dest_node,
                                                        transfer.study_uids)) is not None:
            raise TransferUnderWay(twin)
        retry(transfer, user_id)
    elif action == "cancel" and transfer.is_unfinished:
        cancel(transfer)
    elif action == "confirm" and transfer.state == TransferState.WAITING_CONFIRMATION:
        confirm_patient(transfer)
    else:
        raise ActionRefused(f"{action} does not apply to a transfer that is {transfer.state}")
    ref = transfer.request.call_ref if transfer.request else ""
    audit.record(audit.Action.TRANSFER, request_id=transfer.request_id, detail=f"{ref} transfer {transfer.id} {action}")


def backoff(attempt: int) -> timedelta:
    """Wait before retry `attempt` (1-based): 5 s, 20 s, 1 min, 2 min, 5 min, then 10 min."""
    steps = [5, 20, 60, 120, 300]
    return timedelta(seconds=steps[attempt - 1] if attempt <= len(steps) else 600)
