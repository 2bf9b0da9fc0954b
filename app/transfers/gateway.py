"""Where an instance our gateway SCP received belongs: an export's staging, or the arrivals.

The gateway SCP (`worker.py` runs it) calls `on_stored` for every instance safely on
disk. Most are images other hospitals send us (imports: `inbound.record_arrival`). But
when an export retrieves its study from a PACS that only offers C-MOVE, the PACS sends
the study to this same gateway: those instances belong to that export and must never be
listed as arrivals, where an open import request for the same patient would claim them
(issue 8.4). The export says so on its row (`Transfer.moving_study_uid`) while its C-MOVE
runs; the instance is then moved into the export's staging folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import sqlalchemy as sa

from app.dicom.scp import InstanceMeta
from app.extensions import db
from app.transfers import service
from app.transfers.inbound import record_arrival
from app.transfers.models import Direction, Transfer, TransferState

log = logging.getLogger("iep.gateway")


def on_stored(path: Path, meta: InstanceMeta) -> None:
    """Hand a received instance to the export that is moving its study, else record it
    as an arrival. Idempotent (a sender may send an instance twice)."""
    if not take_for_export(path, meta):
        record_arrival(path, meta)


def take_for_export(path: Path, meta: InstanceMeta) -> bool:
    """Move the instance into the staging of the export whose C-MOVE is bringing this
    study, if one is; True when it did."""
    transfer_id = db.session.scalar(
        sa.select(Transfer.id).where(
            Transfer.moving_study_uid == meta.study_uid,
            Transfer.direction == Direction.OUTBOUND,
            Transfer.state.in_([TransferState.RUNNING, TransferState.QUEUED]),
        ).order_by(Transfer.id)
    )
    if transfer_id is None:
        return False
    folder = service.staging_dir(transfer_id) / meta.study_uid
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(path, folder / Path(path).name)  # same file system: the data dir
    with contextlib.suppress(OSError):
        Path(path).parent.rmdir()  # the study's folder on the gateway, if this left it empty
    log.info("instance for export transfer %s taken from the gateway into its staging", transfer_id)
    return True
