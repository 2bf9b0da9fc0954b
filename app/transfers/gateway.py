"""Where an instance our gateway SCP received belongs: an export's staging, or the arrivals.

The gateway SCP (`worker.py` runs it) calls `on_stored` for every instance safely on
disk. Most are images other hospitals send us (imports: `inbound.record_arrival`). But
when an export retrieves its study from a PACS that only offers C-MOVE, the PACS sends
the study to this same gateway: those instances belong to that export and must never be
listed as arrivals, where an open import request for the same patient would claim them
(issue 8.4). The export says so on its row (`Transfer.moving_study_uid`) while its C-MOVE
runs; the instance is then moved into the export's staging folder.

`ArrivalRecorder` is what worker.py's gateway calls: the same decisions, but the database
hears of a study's arrivals at most once a second (and at once for its first instance,
and when its sender's association ends, when the counts are taken from the folder), so
that a 1,000-instance push costs a few dozen commits, not a thousand commits and a
thousand directory listings (bench/receive.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from flask import Flask

from app.dicom.scp import InstanceMeta
from app.extensions import db
from app.transfers import service
from app.transfers.inbound import record_arrival, record_sender_done
from app.transfers.models import Direction, Transfer, TransferState

log = logging.getLogger("iep.gateway")


def on_stored(path: Path, meta: InstanceMeta) -> None:
    """Hand a received instance to the export that is moving its study, else record it
    as an arrival. Idempotent (a sender may send an instance twice)."""
    if not take_for_export(path, meta):
        record_arrival(path, meta)


def moving_export(study_uid: str) -> int | None:
    """The export transfer whose C-MOVE is bringing this study, if one is."""
    return db.session.scalar(
        sa.select(Transfer.id).where(
            Transfer.moving_study_uid == study_uid,
            Transfer.direction == Direction.OUTBOUND,
            Transfer.state.in_([TransferState.RUNNING, TransferState.QUEUED]),
        ).order_by(Transfer.id)
    )


def take_for_export(path: Path, meta: InstanceMeta, transfer_id: int | None = None) -> bool:
    """Move the instance into the staging of the export whose C-MOVE is bringing this
    study (`transfer_id`, else looked up), if one is; True when it did."""
    transfer_id = transfer_id or moving_export(meta.study_uid)
    if transfer_id is None:
        return False
    folder = service.staging_dir(transfer_id) / meta.study_uid
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(path, folder / Path(path).name)  # same file system: the data dir
    with contextlib.suppress(OSError):
        Path(path).parent.rmdir()  # the study's folder on the gateway, if this left it empty
    log.info("instance for export transfer %s taken from the gateway into its staging", transfer_id)
    return True


RECORD_EVERY = 1.0  # seconds: how stale the desk's count of a study arriving may be


@dataclass
class _Study:
    """What the recorder knows of one study arriving."""

    checked: float  # monotonic time of the last look for an export moving it
    export_id: int | None
    written: float = 0.0  # monotonic time of the last note in the database (0: none yet)
    pending: tuple[Path, InstanceMeta] | None = None  # the newest instance not yet noted
    modalities: set[str] = field(default_factory=set)  # of instances not yet noted


class ArrivalRecorder:
    """`on_stored`, `on_sender_done` and `flush` for worker.py's gateway, each in an app
    context of its own; thread-safe (the gateway calls from each association's thread).

    An instance whose study was noted less than RECORD_EVERY ago is not written at once:
    it is on disk (the sender's success says so), and its study's row exists; `flush`
    (every half second, from the gateway's main loop) and the end of the sender's
    association note it. A note that fails raises, and that sender hears 0xA700 (try
    again), as before. Whether an export's C-MOVE is bringing a study is looked up again
    at most every RECORD_EVERY too: an export says so before its C-MOVE starts.
    """

    def __init__(self, app: Flask, every: float = RECORD_EVERY) -> None:
        self.app = app
        self.every = every
        self._lock = threading.Lock()
        self._studies: dict[str, _Study] = {}

    def on_stored(self, path: Path, meta: InstanceMeta) -> None:
        now = time.monotonic()
        with self._lock:
            study = self._studies.get(meta.study_uid)
            look = study is None or now - study.checked >= self.every
        if look:
            with self.app.app_context():
                try:
                    export_id = moving_export(meta.study_uid)
                finally:
                    db.session.remove()
            with self._lock:
                study = self._studies.setdefault(meta.study_uid, _Study(checked=now, export_id=export_id))
                study.checked, study.export_id = now, export_id
        assert study is not None  # noqa: S101 - set above; narrows the type
        if study.export_id is not None:
            with self.app.app_context():
                try:
                    take_for_export(path, meta, study.export_id)
                finally:
                    db.session.remove()
            return
        with self._lock:
            due = now - study.written >= self.every
            if not due:
                study.pending = (path, meta)
                if meta.modality:
                    study.modalities.add(meta.modality)
                return
            study.written, study.pending = now, None
            modalities, study.modalities = study.modalities, set()
        try:
            self._note(path, meta, modalities)
        except Exception:
            with self._lock:
                study.written = 0.0  # the next instance tries again
                study.modalities |= modalities
            raise

    def _note(self, path: Path, meta: InstanceMeta, modalities: set[str]) -> None:
        with self.app.app_context():
            try:
                record_arrival(path, meta, modalities=modalities)
            finally:
                db.session.remove()

    def _take_pending(self, study_uids: set[str] | None) -> list[tuple[Path, InstanceMeta, set[str]]]:
        with self._lock:
            taken = []
            for uid, study in self._studies.items():
                if study.pending is not None and (study_uids is None or uid in study_uids):
                    taken.append((*study.pending, study.modalities))
                    study.pending, study.modalities, study.written = None, set(), time.monotonic()
            return taken

    def flush(self) -> None:
        """Note every study with instances not yet noted; forget studies quiet for an
        hour. Never raises (what fails is noted at the next arrival or the sender's end)."""
        for path, meta, modalities in self._take_pending(None):
            try:
                self._note(path, meta, modalities)
            except Exception:  # noqa: BLE001 - logged; the sender's end counts the folder again
                log.exception("could not note arrivals")
        with self._lock:
            idle = [uid for uid, s in self._studies.items() if s.pending is None
                    and time.monotonic() - max(s.written, s.checked) > 3600]
            for uid in idle:
                del self._studies[uid]

    def on_sender_done(self, study_uids: set[str], released: bool) -> None:
        """The sender's association ended: note what is pending, then the end itself
        (which counts each study's folder again)."""
        for path, meta, modalities in self._take_pending(study_uids):
            try:
                self._note(path, meta, modalities)
            except Exception:  # noqa: BLE001 - record_sender_done below counts the folder anyway
                log.exception("could not note arrivals")
        with self.app.app_context():
            try:
                record_sender_done(study_uids, released)
            finally:
                db.session.remove()
