"""Running one transfer: the logic behind `jobs.run_transfer` (DESIGN "Transfers").

Everything a run needs is read from the transfer's row; everything it achieves is written
back as it goes (per-instance `sent` / `confirmed`, counters, a heartbeat), so a run that
dies is resumed by the next one from where the rows say, and never sends a RIS entry or
an instance twice. Instances are streamed file by file; no study is held in memory.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from app.dicom import scu
from app.dicom.errors import DicomFailure
from app.dicom.fixup import compare_with_register, fix_up, parse_date
from app.dicom.scp import read_meta
from app.dicom.store_link import PRIORITY_HIGH, PRIORITY_MEDIUM
from app.extensions import db
from app.timeutil import utcnow
from app.transfers import service
from app.transfers.models import (
    Direction,
    InboundStudy,
    RisEntry,
    Transfer,
    TransferItem,
    TransferState,
)
from app.workflow.machine import advance, transition
from app.workflow.statuses import Priority, Status

log = logging.getLogger("iep.transfers")


class LeaseLost(RuntimeError):
    """Another run took the transfer over (ours was presumed dead): stop quietly."""


class Cancelled(RuntimeError):
    """Cancel was pressed: stop between instances."""


class Stop(RuntimeError):
    """The run cannot go on without a person (e.g. demographics disagree)."""


class Progress:
    """Writes progress to the row at most every half second (and renews the lease)."""

    INTERVAL = 0.5  # seconds: at most this much work is redone after a crash

    def __init__(self, transfer: Transfer, token: str, lease: timedelta) -> None:
        self.transfer_id, self.token, self.lease = transfer.id, token, lease
        self.last = 0.0
        self._cancel_checked, self._cancelled = 0.0, False

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.INTERVAL

    def beat(self, force: bool = False, **values: object) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.INTERVAL:
            return
        self.last = now
        if isinstance(values.get("phase"), str):
            values["phase"] = values["phase"][:200]
        values = {**values, "progressed_at": utcnow(), "lease_until": utcnow() + self.lease}
        result = db.session.execute(
            sa.update(Transfer).where(Transfer.id == self.transfer_id, Transfer.lease_token == self.token).values(**values)
        )
        db.session.commit()
        if result.rowcount == 0:
            raise LeaseLost(self.transfer_id)

    def cancelled(self) -> bool:
        """Was Cancel pressed? Read at most every half second (it is polled per instance)."""
        now = time.monotonic()
        if now - self._cancel_checked >= self.INTERVAL:
            self._cancel_checked = now
            self._cancelled = bool(db.session.scalar(
                sa.select(Transfer.cancel_requested).where(Transfer.id == self.transfer_id)))
        return self._cancelled


def _items(transfer_id: int, **where: object) -> list[TransferItem]:
    stmt = sa.select(TransferItem).where(TransferItem.transfer_id == transfer_id).order_by(TransferItem.id)
    for key, value in where.items():
        stmt = stmt.where(getattr(TransferItem, key) == value)
    return list(db.session.scalars(stmt))


def _totals(transfer: Transfer) -> None:
    count, size, sent, confirmed, sent_bytes = db.session.execute(
        sa.select(
            sa.func.count(TransferItem.id),
            sa.func.coalesce(sa.func.sum(TransferItem.size), 0),
            sa.func.count(sa.case((TransferItem.sent, 1))),
            sa.func.count(sa.case((TransferItem.confirmed, 1))),
            sa.func.coalesce(sa.func.sum(sa.case((TransferItem.sent, TransferItem.size), else_=0)), 0),
        ).where(TransferItem.transfer_id == transfer.id)
    ).one()
    transfer.instances_total, transfer.bytes_total = int(count), int(size)
    transfer.instances_done, transfer.instances_confirmed, transfer.bytes_done = int(sent), int(confirmed), int(sent_bytes)


def _add_files(transfer: Transfer, study_uid: str, files: list[Path]) -> None:
    known = set(db.session.scalars(sa.select(TransferItem.sop_uid).where(TransferItem.transfer_id == transfer.id)))
    for path in files:
        if path.stem not in known:
            db.session.add(TransferItem(transfer_id=transfer.id, study_uid=study_uid, sop_uid=path.stem,
                                        path=str(path), size=path.stat().st_size))
    db.session.commit()


# --- stages --------------------------------------------------------------------------------


def stage_from_source(transfer: Transfer, progress: Progress) -> None:
    """Retrieve each study not yet staged from the source node (C-GET, else C-MOVE)."""
    node = transfer.source_node
    staged = set(db.session.scalars(sa.select(TransferItem.study_uid).where(TransferItem.transfer_id == transfer.id)))
    for study_uid in transfer.study_uids:
        if study_uid in staged:
            continue
        folder = service.staging_dir(transfer.id) / study_uid
        progress.beat(force=True, phase=f"Retrieving from {node.name}")

        def on_retrieve(done: int, _bytes: int) -> None:
            progress.beat(phase=f"Retrieving from {node.name}: {done} instances")

        result = scu.retrieve_study(
            service.as_node(node), study_uid, folder, method="get" if node.supports_get else "move",
            our_node=service.our_node(), config=service.ae_config(), on_progress=on_retrieve,
            should_cancel=progress.cancelled,
        )
        if result.cancelled:
            raise Cancelled()
        files = sorted(folder.glob("*.dcm"))
        if not files:
            raise DicomFailure(code="empty", plain=f"{node.name} returned no instances for study {study_uid}",
                               retryable=False)
        _add_files(transfer, study_uid, files)


def add_report(transfer: Transfer) -> None:
    """The report, as an Encapsulated PDF instance in the first study (Appendix 4 step 13)."""
    if not (transfer.report_text or transfer.report_pdf_path):
        return
    if db.session.scalar(sa.select(TransferItem.id).where(TransferItem.transfer_id == transfer.id,
                                                          TransferItem.sop_uid.like("report-%"))):
        return
    from app.transfers.report import encapsulate_report

    study_uid = transfer.study_uids[0]
    sample = next((i for i in _items(transfer.id) if i.study_uid == study_uid), None)
    if sample is None:
        return
    path = encapsulate_report(transfer, Path(sample.path), service.staging_dir(transfer.id) / "report")
    db.session.add(TransferItem(transfer_id=transfer.id, study_uid=study_uid, sop_uid=f"report-{path.stem}",
                                path=str(path), size=path.stat().st_size))
    db.session.commit()


def send_items(transfer: Transfer, progress: Progress, items: list[TransferItem], phase: str) -> list[str]:
    """C-STORE the unsent items to the destination, marking them as they go (so a run
    that dies resumes after the last one marked). Returns the plain reasons of the
    instances that failed, by SOP Instance UID."""
    if not items:
        return []
    # The rows' plain values, read in one SELECT (no IN list: SQLite caps its parameters):
    # the objects are usually expired by an earlier commit, and touching each one would
    # cost a SELECT per instance (400 of them took a quarter of a 400-instance send's time,
    # measured with cProfile).
    keys = [sa.inspect(item).identity[0] for item in items]
    found = {row.id: row for row in db.session.execute(
        sa.select(TransferItem.id, TransferItem.path, TransferItem.size).where(
            TransferItem.transfer_id == transfer.id))}
    rows = [found[key] for key in keys if key in found]
    ids = [row.id for row in rows]
    sizes = [row.size for row in rows]
    marked = 0
    base_done, base_bytes = transfer.instances_done, transfer.bytes_done

    def mark_through(done: int) -> None:
        nonlocal marked
        if done > marked:
            db.session.execute(
                sa.update(TransferItem).where(TransferItem.id.in_(ids[marked:done])).values(sent=True, error=""),
                execution_options={"synchronize_session": False},
            )
            marked = done

    sent_bytes = 0

    def on_progress(done: int, _bytes_sent: int) -> None:
        nonlocal sent_bytes
        sent_bytes += sizes[done - 1] if done else 0
        # Instances are marked sent with each heartbeat, not one by one: a killed run
        # resends at most half a second of instances (the destination keeps one copy).
        if progress.due():
            mark_through(done)
            progress.beat(instances_done=base_done + done, bytes_done=base_bytes + sent_bytes, phase=phase)

    result = scu.send_files(
        service.as_node(transfer.dest_node), [row.path for row in rows], config=service.ae_config(),
        on_progress=on_progress, should_cancel=progress.cancelled,
        # Blue Light goes as a HIGH-priority C-STORE: a PACS that queues by priority files it first.
        priority=PRIORITY_HIGH if transfer.priority == Priority.BLUE_LIGHT.value else PRIORITY_MEDIUM,
    )
    mark_through(result.sent + len(result.failed))
    by_path = {row.path: row.id for row in rows}
    reasons = []
    for failure in result.failed:
        item_id = by_path.get(str(failure.path))
        if item_id is not None:
            db.session.execute(sa.update(TransferItem).where(TransferItem.id == item_id)
                               .values(sent=False, error=failure.plain[:300]),
                               execution_options={"synchronize_session": False})
        reasons.append(f"{failure.sop_uid or failure.path.name}: {failure.plain}")
    db.session.commit()
    if result.cancelled:
        raise Cancelled()
    return reasons


def verify(transfer: Transfer, progress: Progress) -> int:
    """Ask the destination which instances it holds (C-FIND, image level); mark them
    confirmed; unconfirmed ones go back to unsent. Returns how many are missing."""
    progress.beat(force=True, state=TransferState.VERIFYING.value, phase="Checking the destination holds every instance")
    dest = service.as_node(transfer.dest_node)
    missing = 0
    for study_uid in sorted({i.study_uid for i in _items(transfer.id)}):
        held = {sop for _series, sop in scu.find_instances(dest, study_uid, config=service.ae_config())}
        for item in _items(transfer.id, study_uid=study_uid):
            sop = _sop_of(item)
            item.confirmed = sop in held
            if not item.confirmed:
                item.sent = False
                missing += 1
    db.session.commit()
    return missing


def _sop_of(item: TransferItem) -> str:
    if item.sop_uid.startswith("report-") or item.sop_uid.startswith("fixed-"):
        return item.sop_uid.split("-", 1)[1]
    return item.sop_uid


# --- the three directions -------------------------------------------------------------------


def run_outbound(transfer: Transfer, progress: Progress) -> None:
    """Export / trauma: local PACS -> staging -> destination, verified."""
    _step(transfer, Status.UPLOADING)
    stage_from_source(transfer, progress)
    add_report(transfer)
    _deliver(transfer, progress, "Sending to " + transfer.dest_node.name)


def run_inbound(transfer: Transfer, progress: Progress) -> None:
    """Import: gateway copies -> fixed-up copies -> local PACS, verified, then RIS."""
    req = transfer.request
    _step(transfer, Status.DOWNLOADING)
    inbound = list(db.session.scalars(sa.select(InboundStudy).where(InboundStudy.study_uid.in_(transfer.study_uids))))
    if not transfer.mismatch_accepted:
        register = {"family_name": req.patient.family_name, "given_name": req.patient.given_name,
                    "dob": req.patient.dob, "nhs_number": req.patient.nhs_number or ""}
        problems = []
        for study in inbound:
            meta = {"patient_name": study.patient_name, "birth_date": study.birth_date,
                    "patient_id": study.patient_id, "issuer_of_patient_id": study.issuer_of_patient_id,
                    "other_patient_ids": [(i, "") for i in study.other_ids.split(",") if i]}
            problems += [f"{field}: sender '{theirs}', register '{ours}'"
                         for field, theirs, ours in compare_with_register(meta, register)]
        if problems:
            raise Stop("The sender's details differ from the PAS register, so nothing was rewritten: "
                       + "; ".join(sorted(set(problems))) + ". Check the patient, then confirm to go on.")
    # Fix up each gateway copy into staging (idempotent), then send the fixed copies.
    folder = service.staging_dir(transfer.id) / "fixed"
    folder.mkdir(parents=True, exist_ok=True)
    for item in _items(transfer.id, sent=False):
        if item.sop_uid.startswith("fixed-"):
            continue
        target = folder / f"{item.sop_uid}.dcm"
        if not target.exists():
            fix_up(item.path, target, s_number=req.s_number)
            progress.beat(phase="Fixing up headers (PatientID := S number)")
        item.path = str(target)
        item.sop_uid = f"fixed-{item.sop_uid}"
        item.size = target.stat().st_size
    db.session.commit()
    def on_ris() -> None:
        # Before Delivered is said: Delivered (and its e-mail) means on RIS too.
        record_ris_entries(transfer)
        now = utcnow()
        for study in inbound:
            study.delivered_at = study.delivered_at or now

    _deliver(transfer, progress, "Storing to " + transfer.dest_node.name, before_delivered=on_ris)


def run_pull(transfer: Transfer, progress: Progress) -> None:
    """Direct pull: retrieve from the remote node into the gateway store -> On IEP."""
    from app.transfers.inbound import record_arrival

    node = transfer.source_node
    for study_uid in transfer.study_uids:
        folder = service.gateway_store() / study_uid

        def on_retrieve(done: int, _bytes: int) -> None:
            progress.beat(instances_done=done, phase=f"Retrieving from {node.name}")

        result = scu.retrieve_study(
            service.as_node(node), study_uid, folder, method="get" if node.supports_get else "move",
            our_node=service.our_node(), config=service.ae_config(), on_progress=on_retrieve,
            should_cancel=progress.cancelled,
        )
        if result.cancelled:
            raise Cancelled()
        for path in sorted(folder.glob("*.dcm")):
            with open(path, "rb") as fh:
                meta = read_meta(dcmread(fh, stop_before_pixels=True), calling_ae=node.ae_title[:16])
            study = record_arrival(path, meta)
            if study.request_id is None and transfer.request_id is not None:
                study.request_id = transfer.request_id
                db.session.commit()
    transfer.state = TransferState.DELIVERED.value
    transfer.finished_at = utcnow()
    _totals(transfer)
    req = transfer.request
    if req is not None and req.status != Status.ON_IEP:
        transition(req, Status.ON_IEP, actor_id=None, note=f"Retrieved from {node.name}; ready to download to PACS.")
    db.session.commit()


def _deliver(transfer: Transfer, progress: Progress, phase: str,
             before_delivered: Callable[[], None] | None = None) -> None:
    """Send what is unsent, verify at the destination, and say Delivered only if every
    instance is confirmed (progress never claims more than was confirmed)."""
    _totals(transfer)
    db.session.commit()
    for _round in range(2):  # one immediate resend of instances the destination lacks
        reasons = send_items(transfer, progress, _items(transfer.id, sent=False), phase)
        if reasons:
            _totals(transfer)
            db.session.commit()
            raise PartialFailure(reasons)
        missing = verify(transfer, progress)
        _totals(transfer)
        db.session.commit()
        if not missing:
            break
    else:
        raise DicomFailure(code="missing", plain=(
            f"{missing} of {transfer.instances_total} instances are not at the destination after sending; "
            "Retry resends only those."), retryable=False)
    if before_delivered is not None:
        before_delivered()
    transfer.state = TransferState.DELIVERED.value
    transfer.stalled = False  # a stall on the way is history once every instance is confirmed
    transfer.finished_at = utcnow()
    transfer.phase = "Delivered and verified"
    _step(transfer, Status.DELIVERED)
    db.session.commit()
    shutil.rmtree(service.staging_dir(transfer.id), ignore_errors=True)


class PartialFailure(RuntimeError):
    """Some instances were refused; the others are sent. Names the ones that failed."""

    def __init__(self, reasons: list[str]) -> None:
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        super().__init__(f"{len(reasons)} instance(s) could not be sent: {shown}. Retry resends only those.")


def record_ris_entries(transfer: Transfer) -> int:
    """One RIS entry per imported examination (guideline 2.3 f); never twice.

    Exam code: the request's exam line for that date, if any. Event date: the date the
    images were acquired (the study date), never the transfer date.
    """
    req = transfer.request
    made = 0
    for study in db.session.scalars(sa.select(InboundStudy).where(InboundStudy.study_uid.in_(transfer.study_uids))):
        if db.session.scalar(sa.select(RisEntry.id).where(RisEntry.study_uid == study.study_uid)):
            continue
        acquired = parse_date(study.study_date)
        code = next((e.exam_code for e in req.exams if e.exam_date == acquired and e.exam_code), "")
        db.session.add(RisEntry(request_id=req.id, study_uid=study.study_uid, accession=study.accession,
                                exam_code=code, event_date=acquired, s_number=req.s_number))
        made += 1
    db.session.commit()
    return made


def _step(transfer: Transfer, status: Status) -> None:
    """Move the transfer's request along as the work progresses (never backwards)."""
    if advance(transfer.request, status, actor_id=None):
        db.session.commit()


RUNNERS: dict[str, Callable[[Transfer, Progress], None]] = {
    Direction.OUTBOUND.value: run_outbound,
    Direction.INBOUND.value: run_inbound,
    Direction.PULL.value: run_pull,
}
