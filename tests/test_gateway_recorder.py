"""worker.py's gateway notes arrivals at most once a second (app.transfers.gateway.ArrivalRecorder).

What the desk must still show: the exact count, size and modalities of a pushed study
once its sender has finished (including the instances that came between two notes, and
a modality only they carry); a count that keeps up while a sender is still sending; and
a sender told to try again (0xA700) when the first note of a study cannot be written.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread

from app.dicom.ae import Node
from app.dicom.scp import STATUS_OUT_OF_RESOURCES
from app.dicom.store_link import StoreLink, read_part10
from app.dicom.synth import make_study
from app.extensions import db
from app.transfers.models import InboundStudy
from tests.dicom_peers import QUICK, run_storescu

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
AET = "IEPGATEWAY"


def studies() -> list[InboundStudy]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(InboundStudy).order_by(InboundStudy.id)))


def wait_for(condition, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def ct_and_sr(folder: Path, n_ct: int) -> list[Path]:
    """One study: n_ct CT instances, then one SR-modality instance in the middle of the push."""
    paths = make_study(folder / "ct", patient_id="REC-1", patient_name="RECORDER^ONE", birth_date="19600101",
                       study_date="20240301", n_series=1, n_per_series=n_ct, rows=64, cols=64,
                       study_uid="1.2.826.0.1.3680043.9.7777.1")
    (sr,) = make_study(folder / "sr", patient_id="REC-1", patient_name="RECORDER^ONE", birth_date="19600101",
                       study_date="20240301", modality="SR", rows=64, cols=64,
                       study_uid="1.2.826.0.1.3680043.9.7777.1")
    return [*paths[: n_ct // 2], sr, *paths[n_ct // 2:]]


def test_a_push_is_counted_exactly_once_its_sender_has_finished(worker_gateway: Node, tmp_path: Path) -> None:
    paths = ct_and_sr(tmp_path / "src", 40)
    done = run_storescu(worker_gateway, paths)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: [s.sender_done_at is not None for s in studies()] == [True])
    (study,) = studies()
    assert study.instances == 41
    stored = [Path(study.folder) / f"{read_part10(p).sop_uid}.dcm" for p in paths]
    assert study.bytes == sum(f.stat().st_size for f in stored)  # every one sent is there, and counted
    assert study.modalities == "CT,SR"  # the SR came between two notes, and still counts
    assert study.sender_released is True


def test_the_count_keeps_up_while_the_sender_is_still_sending(worker_gateway: Node, tmp_path: Path) -> None:
    paths = ct_and_sr(tmp_path / "src", 12)
    parts = [read_part10(p) for p in paths]
    with StoreLink(worker_gateway, sorted({(p.sop_class, p.syntax) for p in parts}), config=QUICK) as link:
        for path, part in zip(paths, parts, strict=True):
            assert int(link.store(path, part, link.context_for(part.sop_class, part.syntax)).Status) == 0
        # The association is still open: no end, no recount; the gateway's flush notes them.
        assert wait_for(lambda: [s.instances for s in studies()] == [13], 5)
        assert studies()[0].sender_done_at is None
    assert wait_for(lambda: studies()[0].sender_done_at is not None)


def as_owner(database: dict[str, str], statement: str) -> None:
    """DDL as the tables' owner: the desk's own role may not (PostgreSQL)."""
    if database["kind"] == "postgresql":
        owner = sa.create_engine(database["owner_url"], poolclass=sa.NullPool)
        with owner.begin() as conn:
            conn.execute(sa.text(statement))
        owner.dispose()
    else:
        db.session.execute(sa.text(statement))
        db.session.commit()


def test_a_first_instance_that_cannot_be_noted_is_refused_for_a_retry(
        worker_gateway: Node, database: dict[str, str], tmp_path: Path) -> None:
    """worker.py's gateway, while the database refuses the note (its table is away): the
    sender hears 0xA700 and the instance counts nowhere, and the gateway keeps serving;
    once the database is back, the re-sent instance is noted, and the gateway stops
    cleanly (the fixture checks its exit)."""
    (path,) = make_study(tmp_path / "src", patient_id="REC-2", patient_name="RECORDER^TWO", birth_date="19600101",
                         study_date="20240301", rows=64, cols=64)
    part = read_part10(path)
    db.session.commit()
    as_owner(database, "ALTER TABLE inbound_studies RENAME TO inbound_studies_away")
    try:
        for _ in range(2):  # the first refusal leaves the gateway able to answer the next sender
            with StoreLink(worker_gateway, [(part.sop_class, part.syntax)], config=QUICK) as link:
                status = link.store(path, part, link.context_for(part.sop_class, part.syntax))
            assert int(status.Status) == STATUS_OUT_OF_RESOURCES
        time.sleep(1.5)  # a flush or two of the recorder with the table away: nothing to note, nothing raised
    finally:
        db.session.rollback()
        as_owner(database, "ALTER TABLE inbound_studies_away RENAME TO inbound_studies")
    assert studies() == []
    with StoreLink(worker_gateway, [(part.sop_class, part.syntax)], config=QUICK) as link:
        assert int(link.store(path, part, link.context_for(part.sop_class, part.syntax)).Status) == 0
    assert wait_for(lambda: [(s.instances, s.sender_done_at is not None) for s in studies()] == [(1, True)])
    assert dcmread(Path(studies()[0].folder) / f"{part.sop_uid}.dcm").PatientID == "REC-2"
