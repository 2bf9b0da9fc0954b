"""Running one transfer: the logic behind `jobs.run_transfer` (DESIGN "Transfers").

Everything a run needs is read from the transfer's row; everything it achieves is written
back as it goes (per-instance `sent` / `confirmed`, counters, a heartbeat), so a run that
dies is resumed by the next one from where the rows say, and never sends a RIS entry or
an instance twice. Instances are streamed file by file; no study is held in memory.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from app import audit
from app.dicom import scu
from app.dicom.errors import DicomFailure
from app.dicom.fixup import compare_with_register, fix_up, parse_date
from app.dicom.scp import read_meta
from app.dicom.store_link import PRIORITY_HIGH, PRIORITY_MEDIUM
from app.extensions import db, rowcount
from app.requests.models import Request
from app.requests.statuses import Priority, Status
from app.timeutil import utcnow
from app.transfers import exams, service
from app.transfers.models import (
    DicomNode,
    Direction,
    InboundStudy,
    RisEntry,
    Transfer,
    TransferItem,
    TransferState,
)
from app.workflow.machine import advance, transition

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
        if isinstance(phase := values.get("phase"), str):
            values["phase"] = phase[:200]
        values = {**values, "progressed_at": utcnow(), "lease_until": utcnow() + self.lease}
        result = db.session.execute(
            sa.update(Transfer)
            .where(Transfer.id == self.transfer_id, Transfer.lease_token == self.token)
            .values(**values)
        )
        db.session.commit()
        if rowcount(result) == 0:
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
    transfer.instances_done, transfer.instances_confirmed = int(sent), int(confirmed)
    transfer.bytes_done = int(sent_bytes)


def _source(transfer: Transfer) -> DicomNode:
    """The node an export or a pull retrieves from (`create_transfer` is given one for both)."""
    if transfer.source_node is None:
        raise ValueError(f"transfer {transfer.id} ({transfer.direction}) names no source node")
    return transfer.source_node


def _dest(transfer: Transfer) -> DicomNode:
    """The node an export or an import sends to (`create_transfer` is given one for both)."""
    if transfer.dest_node is None:
        raise ValueError(f"transfer {transfer.id} ({transfer.direction}) names no destination node")
    return transfer.dest_node


def _request(transfer: Transfer) -> Request:
    """The request an import belongs to: its register details and S number are the fix-up's."""
    if transfer.request is None:
        raise ValueError(f"transfer {transfer.id} ({transfer.direction}) belongs to no request")
    return transfer.request


# --- stages --------------------------------------------------------------------------------


def _listed(transfer: Transfer, study_uid: str, progress: Progress) -> list[TransferItem]:
    """The study's instances as the source lists them (C-FIND, IMAGE level), one row each,
    asked once per transfer. A retrieval is checked against this list, never against what
    happened to arrive (issue 8.2)."""
    items = [i for i in _items(transfer.id, study_uid=study_uid) if not i.sop_uid.startswith(("report-", "fixed-"))]
    if items:
        return items
    node = _source(transfer)
    progress.beat(force=True, phase=f"Listing the study's instances on {node.name}")
    listed = scu.list_instances(service.as_node(node), study_uid, config=service.ae_config())
    if not listed:
        raise DicomFailure(code="empty", plain=f"{node.name} holds no instances of study {study_uid}", retryable=False)
    for info in listed:
        db.session.add(TransferItem(
            transfer_id=transfer.id, study_uid=study_uid, sop_uid=info.sop_uid, series_uid=info.series_uid,
            series_number=info.series_number[:12], series_description=info.series_description[:64],
            instance_number=info.instance_number[:12], path="", size=0))
    db.session.commit()
    return [i for i in _items(transfer.id, study_uid=study_uid) if not i.sop_uid.startswith(("report-", "fixed-"))]


def _take_arrived(transfer: Transfer, study_uid: str, folder: Path, items: list[TransferItem],
                  on_gateway: bool) -> list[Path]:
    """Match the files in `folder` to the listed rows (by SOP Instance UID, the file's
    name); a file the list did not have is added (the source gained it since). Returns the
    files newly taken. `on_gateway`: a pull, whose instances are done once they are here."""
    by_sop = {i.sop_uid: i for i in items}
    new: list[Path] = []
    for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
        item = by_sop.get(path.stem)
        if item is None:
            item = TransferItem(transfer_id=transfer.id, study_uid=study_uid, sop_uid=path.stem)
            db.session.add(item)
            items.append(item)
            by_sop[path.stem] = item
        elif item.path:
            continue
        item.path, item.size, item.error = str(path), path.stat().st_size, ""
        if on_gateway:
            item.sent = item.confirmed = True
        new.append(path)
    db.session.commit()
    return new


def _chunks(uids: list[str], size: int = 100) -> list[list[str]]:
    return [uids[n:n + size] for n in range(0, len(uids), size)]


def fetch_study(transfer: Transfer, study_uid: str, folder: Path, progress: Progress, *,
                on_gateway: bool = False, on_arrived: Callable[[list[Path]], None] | None = None) -> list[Path]:
    """Retrieve what the source listed and is not here yet (the whole study the first
    time; on a retry only the missing instances, series by series), reading every final
    response. Raises DicomFailure "incomplete" (retryable) naming each instance still
    missing, with the source's own word for it. Returns the files newly arrived, which
    `on_arrived` also gets (before any raise)."""
    node = _source(transfer)
    items = _listed(transfer, study_uid, progress)
    missing = [i for i in items if not i.path]
    if not missing:
        return []
    if len(missing) == len(items):
        plan: list[tuple[str | None, list[str] | None]] = [(None, None)]
    else:
        by_series: dict[str, list[str]] = {}
        for item in missing:
            by_series.setdefault(item.series_uid, []).append(item.sop_uid)
        plan = [(series, chunk) for series, sops in by_series.items() if series for chunk in _chunks(sops)]
        if any(not item.series_uid for item in missing):
            plan = [(None, None)]  # an instance we cannot place in a series: ask for the study
    method = "get" if node.supports_get else "move"
    said_failed: set[str] = set()
    outcomes: list[str] = []
    failure: DicomFailure | None = None
    if method == "move" and transfer.direction == Direction.OUTBOUND:
        # Our gateway hands this study's instances to this transfer's staging (issue 8.4).
        transfer.moving_study_uid = study_uid
        db.session.commit()
    try:
        for series_uid, sop_uids in plan:
            def on_retrieve(done: int, _bytes: int) -> None:
                progress.beat(phase=f"Retrieving from {node.name}: {done} instances")

            progress.beat(force=True, phase=f"Retrieving from {node.name}")
            try:
                result = scu.retrieve_study(
                    service.as_node(node), study_uid, folder, method=method, our_node=service.our_node(),
                    config=service.ae_config(), on_progress=on_retrieve, should_cancel=progress.cancelled,
                    series_uid=series_uid, sop_uids=sop_uids,
                )
            except DicomFailure as exc:
                failure = exc
                said_failed.update(exc.failed_uids or [])
                break
            if result.cancelled:
                raise Cancelled()
            said_failed.update(result.failed_uids)
            if not result.ok:
                outcomes.append(result.plain_outcome())
    finally:
        if transfer.moving_study_uid:
            db.session.rollback()
            transfer.moving_study_uid = ""
            db.session.commit()
    arrived = _take_arrived(transfer, study_uid, folder, items, on_gateway)
    if on_arrived is not None and arrived:
        on_arrived(arrived)
    still = [i for i in items if not i.path]
    if not still:
        return arrived
    source_said = "; ".join(outcomes) or (failure.plain if failure else "")
    for item in still:
        why = (f"{node.name} reported it could not send it" if item.sop_uid in said_failed
               else f"it did not arrive from {node.name}")
        item.error = (why + (f" ({source_said})" if source_said else ""))[:300]
    db.session.commit()
    raise DicomFailure(
        code="incomplete",
        plain=(f"{len(still)} of {len(items)} instances of the study did not come from {node.name}: "
               + describe_items(still, limit=5) + ". Retry fetches only the missing ones"),
        retryable=failure.retryable if failure is not None and not arrived else True,
        failed_uids=[i.sop_uid for i in still],
    )


def stage_from_source(transfer: Transfer, progress: Progress) -> None:
    """Retrieve each study from the source node into staging (C-GET, else C-MOVE to our
    gateway), complete against the source's own list before anything is sent."""
    for study_uid in transfer.study_uids:
        fetch_study(transfer, study_uid, service.staging_dir(transfer.id) / study_uid, progress)


def describe(item: TransferItem) -> str:
    """"series 3 (AX T2), instance 17, 1.2.3…: reason" — how the desk names an instance
    to a person (issue 8.7): series number and description, instance number, SOP UID."""
    if not (item.series_number or item.series_description or item.instance_number) and item.path:
        _names_from_file(item)
    parts = []
    if item.series_number or item.series_description:
        parts.append(f"series {item.series_number or '?'}"
                     + (f" ({item.series_description})" if item.series_description else ""))
    if item.instance_number:
        parts.append(f"instance {item.instance_number}")
    parts.append(_sop_of(item))
    return ", ".join(parts) + (f": {item.error}" if item.error else "")


def describe_items(items: list[TransferItem], limit: int = 5) -> str:
    shown = "; ".join(describe(i) for i in items[:limit])
    return shown + (f"; and {len(items) - limit} more (listed on the transfer)" if len(items) > limit else "")


def _names_from_file(item: TransferItem) -> None:
    """Series and instance numbers from the file's header, for rows made from files."""
    try:
        with open(item.path, "rb") as fh:
            ds = dcmread(fh, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "InstanceNumber"])
    except Exception:  # noqa: BLE001 - a name is a courtesy; the UID still names it
        return
    item.series_uid = item.series_uid or str(ds.get("SeriesInstanceUID", "") or "")[:64]
    item.series_number = str(ds.get("SeriesNumber", "") or "")[:12]
    item.series_description = str(ds.get("SeriesDescription", "") or "")[:64]
    item.instance_number = str(ds.get("InstanceNumber", "") or "")[:12]


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
    # measured with cProfile). Each item was loaded from the database, so each has an identity.
    keys = [identity[0] for item in items if (identity := sa.inspect(item).identity) is not None]
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

    try:
        result = scu.send_files(
            service.as_node(_dest(transfer)), [row.path for row in rows], config=service.ae_config(),
            on_progress=on_progress, should_cancel=progress.cancelled,
            # Blue Light goes as a HIGH-priority C-STORE: a PACS that queues by priority files it first.
            priority=PRIORITY_HIGH if transfer.priority == Priority.BLUE_LIGHT else PRIORITY_MEDIUM,
            workdir=service.staging_dir(transfer.id) / "convert",
        )
    except DicomFailure as failure:
        if failure.code == "syntax-refused":  # nothing was stored: say, per instance, why
            _note_refused(transfer, failure)
        raise
    mark_through(result.sent + len(result.failed))
    by_path = {row.path: row.id for row in rows}
    failed_ids = []
    for refused in result.failed:
        item_id = by_path.get(str(refused.path))
        if item_id is not None:
            failed_ids.append(item_id)
            db.session.execute(sa.update(TransferItem).where(TransferItem.id == item_id)
                               .values(sent=False, error=refused.plain[:300]),
                               execution_options={"synchronize_session": False})
    db.session.commit()
    if result.cancelled:
        raise Cancelled()
    failed_rows = [db.session.get(TransferItem, item_id) for item_id in failed_ids]
    return [describe(item) for item in failed_rows if item is not None]


def _note_refused(transfer: Transfer, failure: DicomFailure) -> None:
    """The send stopped before storing anything (a syntax the destination takes in no
    form): each instance's row keeps its own reason, for the widget and the e-mail."""
    reasons = dict(line.split(": ", 1) for line in failure.plain.split(" — ", 1)[-1].split("; ") if ": " in line)
    for item in _items(transfer.id):
        if item.sop_uid in failure.failed_uids or _sop_of(item) in failure.failed_uids:
            item.error = reasons.get(_sop_of(item), "the destination accepts it in no transfer syntax")[:300]
    db.session.commit()


def verify(transfer: Transfer, progress: Progress) -> int:
    """Ask the destination which instances it holds (C-FIND, image level); mark them
    confirmed; unconfirmed ones go back to unsent. Returns how many are missing."""
    progress.beat(force=True, state=TransferState.VERIFYING, phase="Checking the destination holds every instance")
    node = _dest(transfer)
    dest = service.as_node(node)
    missing = 0
    for study_uid in sorted({i.study_uid for i in _items(transfer.id)}):
        held = {sop for _series, sop in scu.find_instances(dest, study_uid, config=service.ae_config())}
        for item in _items(transfer.id, study_uid=study_uid):
            sop = _sop_of(item)
            item.confirmed = sop in held
            if item.confirmed:
                item.error = ""
            else:
                item.sent = False
                item.error = f"not found at {node.name} after sending"
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
    _deliver(transfer, progress, "Sending to " + _dest(transfer).name)


def run_inbound(transfer: Transfer, progress: Progress) -> None:
    """Import: gateway copies -> fixed-up copies -> local PACS, verified, then RIS."""
    _step(transfer, Status.DOWNLOADING)
    req = _request(transfer)
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
    # Fix up each gateway copy into staging (idempotent) and send the fixed copies: a chunk
    # goes while the next is being fixed up, on a thread (file work and pydicom, no
    # database), so the headers cost what the destination's answers leave over.
    folder = service.staging_dir(transfer.id) / "fixed"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [item for item in _items(transfer.id, sent=False) if not item.sop_uid.startswith("fixed-")]
    phase = "Storing to " + _dest(transfer).name
    # Only fixed-up copies are ever sent: every row names its fixed copy before _deliver.
    early = True  # chunks go before the last is fixed up, until an instance is refused
    with _FixUps([(Path(item.path), folder / f"{item.sop_uid}.dcm") for item in todo], req.s_number) as fixing:
        for start in range(0, len(todo), FIX_UP_CHUNK):
            chunk = todo[start:start + FIX_UP_CHUNK]
            progress.beat(force=start == 0, phase="Fixing up headers (PatientID := S number)")
            for n, item in enumerate(chunk, start):
                target = fixing.wait(n)
                item.path = str(target)
                item.sop_uid = f"fixed-{item.sop_uid}"
                item.size = target.stat().st_size
            db.session.commit()
            if early and start + FIX_UP_CHUNK < len(todo) and send_items(transfer, progress, chunk, phase):
                early = False  # refused ones stay unsent: _deliver tries them once more and says why

    def on_ris() -> None:
        # Before Delivered is said: Delivered (and its e-mail) means on RIS too.
        record_ris_entries(transfer)
        now = utcnow()
        for study in inbound:
            study.delivered_at = study.delivered_at or now

    _deliver(transfer, progress, phase, before_delivered=on_ris)


FIX_UP_CHUNK = 100  # instances sent while the next ones are fixed up


class _FixUps:
    """`fix_up` of (source, target) pairs in order, on a thread of its own; `wait(n)` gives
    the n-th target once it is written (re-raising what that fix-up raised). A target that
    exists is a fix-up done before (fix_up writes atomically). Leaving the `with` stops
    the thread after the file in hand."""

    def __init__(self, pairs: list[tuple[Path, Path]], s_number: str) -> None:
        self.pairs = pairs
        self.s_number = s_number
        self.done: list[BaseException | None] = []
        self.ready = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fix-up", daemon=True)

    def __enter__(self) -> _FixUps:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        for source, target in self.pairs:
            if self.stop.is_set():
                return
            outcome: BaseException | None = None
            try:
                if not target.exists():
                    fix_up(source, target, s_number=self.s_number)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting job, which raises it
                outcome = exc
            with self.ready:
                self.done.append(outcome)
                self.ready.notify_all()
            if outcome is not None:
                return

    def wait(self, n: int) -> Path:
        with self.ready:
            while len(self.done) <= n:
                if self.done and self.done[-1] is not None:
                    break
                self.ready.wait(1.0)
                if not self.thread.is_alive() and len(self.done) <= n:
                    break
        if len(self.done) > n and self.done[n] is None:
            return self.pairs[n][1]
        failed = next((outcome for outcome in self.done if outcome is not None), None)
        raise failed if failed is not None else RuntimeError("the fix-up stopped early")


def run_pull(transfer: Transfer, progress: Progress) -> None:
    """Direct pull: retrieve from the remote node into the gateway store -> On IEP.

    On IEP is said only when every instance the remote listed is on the gateway (issue
    8.3); until then the arrivals are recorded ("arriving: N so far") and the pull retries
    for what is missing, or fails naming it."""
    from app.transfers.inbound import record_arrival

    node = _source(transfer)

    def record(paths: list[Path]) -> None:
        for path in paths:
            with open(path, "rb") as fh:
                meta = read_meta(dcmread(fh, stop_before_pixels=True), calling_ae=node.ae_title[:16])
            study = record_arrival(path, meta)
            if study.request_id is None and transfer.request_id is not None:
                study.request_id = transfer.request_id
                db.session.commit()
        _totals(transfer)
        db.session.commit()

    for study_uid in transfer.study_uids:
        fetch_study(transfer, study_uid, service.gateway_store() / study_uid, progress, on_gateway=True,
                    on_arrived=record)
        # Every instance the remote listed is here: the desk knows the study is complete.
        study = db.session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study_uid))
        if study is not None and study.complete_at is None:
            study.complete_at = utcnow()
            db.session.commit()
    transfer.state = TransferState.DELIVERED
    transfer.stalled = False
    transfer.finished_at = utcnow()
    transfer.phase = f"Every instance {node.name} listed is on the gateway"
    _totals(transfer)
    req = transfer.request
    if req is not None and req.status != Status.ON_IEP:
        transition(req, Status.ON_IEP, actor_id=None, actor=audit.SYSTEM_TRANSFER_ENGINE,
                   note=f"Retrieved from {node.name}; ready to download to PACS.")
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
        lacking = _items(transfer.id, confirmed=False)
        raise DicomFailure(code="missing", plain=(
            f"{missing} of {transfer.instances_total} instances are not at the destination after sending: "
            f"{describe_items(lacking)}. Retry resends only those."), retryable=False,
            failed_uids=[_sop_of(i) for i in lacking])
    if before_delivered is not None:
        before_delivered()
    transfer.state = TransferState.DELIVERED
    transfer.stalled = False  # a stall on the way is history once every instance is confirmed
    transfer.finished_at = utcnow()
    transfer.phase = "Delivered and verified"
    if transfer.partial_ok:
        transfer.phase = "Delivered and verified: what had arrived (may be incomplete)"
    if advance(transfer.request, Status.DELIVERED, actor_id=None, actor=audit.SYSTEM_TRANSFER_ENGINE,
               note=_partial_note(transfer)):
        db.session.commit()
    db.session.commit()
    shutil.rmtree(service.staging_dir(transfer.id), ignore_errors=True)


class PartialFailure(RuntimeError):
    """Some instances were refused; the others are sent. Names the ones that failed."""

    def __init__(self, reasons: list[str]) -> None:
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        super().__init__(f"{len(reasons)} instance(s) could not be sent: {shown}. Retry resends only those.")


def _partial_note(transfer: Transfer) -> str:
    """What the Delivered status (and so the requester's e-mail) says of a partial import."""
    if not transfer.partial_ok:
        return ""
    return (f"Partial: the desk sent the {transfer.instances_confirmed} instances that had arrived; the study may be "
            "incomplete (the sending hospital's images had not all arrived). Ask the desk if you need the rest.")


def record_ris_entries(transfer: Transfer) -> int:
    """One RIS entry per imported examination (guideline 2.3 f); never twice.

    Exam code: the sender's (the study's Procedure Code Sequence), else that of the
    request's exam line the study matches by date and description (`exams.choose_code`),
    else none and the entry is flagged. Event date: the date the images were acquired
    (the study date, else the instance's acquisition date), never the transfer date. The
    entry keeps the sender's Patient ID and issuer, which PACS now files under the S number.
    """
    req = _request(transfer)
    lines = exams.lines_of(req.exams)
    made = 0
    for study in db.session.scalars(sa.select(InboundStudy).where(InboundStudy.study_uid.in_(transfer.study_uids))):
        if db.session.scalar(sa.select(RisEntry.id).where(RisEntry.study_uid == study.study_uid)):
            continue
        sample = _sample_path(transfer, study.study_uid)
        header = exams.read_sender_header(sample) if sample else exams.SenderHeader()
        acquired = parse_date(study.study_date) or header.acquired
        choice = exams.choose_code(header, exams.Study.of(acquired, study.description, study.modalities), lines)
        db.session.add(RisEntry(request_id=req.id, study_uid=study.study_uid, accession=study.accession,
                                exam_code=choice.code, event_date=acquired, s_number=req.s_number,
                                partial=transfer.partial_ok,
                                note=(f"Partial: {study.instances} instances had arrived when the desk sent it; "
                                      "the study may be incomplete.") if transfer.partial_ok else "",
                                sender_patient_id=study.patient_id, sender_issuer=study.issuer_of_patient_id,
                                code_source=choice.source.value, code_missing=choice.missing, code_note=choice.note))
        if choice.missing:
            log.warning("%s: RIS entry for study %s has no exam code", req.call_ref, study.study_uid)
        made += 1
    db.session.commit()
    return made


def _sample_path(transfer: Transfer, study_uid: str) -> str:
    """One image of the study as sent (fixed-up copy), to read the sender's exam code from."""
    return db.session.scalar(sa.select(TransferItem.path).where(
        TransferItem.transfer_id == transfer.id, TransferItem.study_uid == study_uid, TransferItem.path != "",
        ~TransferItem.sop_uid.startswith("report-")).order_by(TransferItem.id).limit(1)) or ""


def _step(transfer: Transfer, status: Status) -> None:
    """Move the transfer's request along as the work progresses (never backwards)."""
    if advance(transfer.request, status, actor_id=None, actor=audit.SYSTEM_TRANSFER_ENGINE):
        db.session.commit()


RUNNERS: dict[str, Callable[[Transfer, Progress], None]] = {
    Direction.OUTBOUND: run_outbound,
    Direction.INBOUND: run_inbound,
    Direction.PULL: run_pull,
}
