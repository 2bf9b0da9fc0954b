"""Issue 8 point 9: what the gateway refuses is listed on Arrivals, counted in Action
Required and purged after 15 days — through the real path: a GatewaySCP wired as
worker.py's `run_gateway` wires it, real senders (DCMTK storescu, the desk's own StoreLink),
the desk's pages through the Flask client, and the purge job."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread

from app.audit import Action, AuditEvent
from app.dicom import scu
from app.dicom.ae import Node
from app.dicom.scp import STATUS_MALFORMED, STATUS_MISSING_ATTRIBUTE, GatewaySCP
from app.extensions import db
from app.timeutil import utcnow
from app.transfers import service
from app.transfers.inbound import in_app_context, record_arrival, record_quarantined
from app.transfers.quarantine import QuarantinedFile, purge_quarantine
from tests.dicom_peers import QUICK, peer_env, require_binary
from tests.test_dicom_scp import store, study

pytestmark = pytest.mark.timeout(120)

AET = "IEPGATEWAY"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gateway(app) -> Iterator[Node]:  # noqa: ANN001
    """The desk's gateway SCP with worker.py's callbacks (run_gateway builds the same)."""
    scp = GatewaySCP(ae_title=AET, port=0, storage_dir=service.gateway_store(),
                     quarantine_dir=service.gateway_quarantine(), config=QUICK,
                     on_stored=in_app_context(app, record_arrival),
                     on_quarantined=in_app_context(app, record_quarantined))
    scp.start()
    yield Node(AET, "127.0.0.1", scp.port)
    scp.stop()


def rows() -> list[QuarantinedFile]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(QuarantinedFile).order_by(QuarantinedFile.id)))


def text(html: str) -> str:
    """A page's text with tags and runs of white space collapsed (for phrase checks)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def refused(gateway: Node, tmp_path: Path) -> dict[str, QuarantinedFile]:
    """Three refusals, one of each kind, each answered with a failure status."""
    a, b, c = study(tmp_path / "src", n_per_series=3, patient_id="SND-77",
                    patient_name="O'HARA^<b>Bold</b>")

    # (a) no Study Instance UID, pushed by DCMTK: the header is readable.
    ds = dcmread(a)
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "nostudy.dcm")
    binary = require_binary("storescu", "dcmtk")
    done = subprocess.run([binary, "-v", "--aetitle", "RADSENDER", "--call", AET, "127.0.0.1", str(gateway.port),
                           str(tmp_path / "nostudy.dcm")], env=peer_env(), capture_output=True, text=True, timeout=60)
    said = done.stdout + done.stderr
    assert "Received Store Response (Error: CannotUnderstand)" in said, said  # 0xC221

    # (b) a data set cut short in its pixel data, sent byte for byte by the desk's sender.
    data = b.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    result = scu.send_files(gateway, [tmp_path / "cut.dcm"], config=QUICK)
    assert result.sent == 0 and result.failed[0].code == f"status-0x{STATUS_MALFORMED:04X}"

    # (c) not DICOM at all behind a valid File Meta Information.
    raw = c.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    (tmp_path / "garbage.dcm").write_bytes(raw[:meta_end] + b"%PDF-1.4 not an image\n" * 200)
    (status,) = store(gateway, tmp_path / "garbage.dcm")
    assert status.Status == STATUS_MALFORMED

    found = rows()
    assert len(found) == 3
    return {"no_study": found[0], "truncated": found[1], "garbage": found[2]}


def test_each_refusal_is_recorded_with_sender_reason_and_patient_if_readable(refused) -> None:
    no_study, truncated, garbage = refused["no_study"], refused["truncated"], refused["garbage"]
    assert (no_study.sender_ae, no_study.reason) == ("RADSENDER", "missing Study Instance UID")
    assert (no_study.patient_name, no_study.patient_id, no_study.study_uid) == ("O'HARA^<b>Bold</b>", "SND-77", "")
    assert truncated.sender_ae == QUICK.ae_title and "truncated" in truncated.reason
    assert (truncated.patient_name, truncated.patient_id) == ("O'HARA^<b>Bold</b>", "SND-77")  # read up to the cut
    assert garbage.reason.startswith("malformed data set") and (garbage.patient_name, garbage.patient_id) == ("", "")
    for row in refused.values():
        path = Path(row.path)
        assert path.parent == service.gateway_quarantine() and path.stat().st_size == row.size > 0
        assert path.with_name(path.stem + ".reason.txt").read_text().startswith(f"reason: {row.reason}")
        assert row.purged_at is None
    assert service.gateway_store().exists() and not list(service.gateway_store().rglob("*.dcm"))


def test_arrivals_lists_refused_files_escaped_and_action_required_counts_them(refused, client, login_as) -> None:
    login_as("analyst")
    html = client.get("/desk/arrivals").get_data(as_text=True)
    page = text(html)
    assert "Refused by the gateway" in page
    assert "RADSENDER" in page and QUICK.ae_title in page
    assert "missing Study Instance UID" in page and "truncated" in page
    assert "O&#39;HARA^&lt;b&gt;Bold&lt;/b&gt; (SND-77)" in page  # free text is escaped
    assert "<b>Bold" not in html
    assert "not readable" in page  # the non-DICOM file names no patient

    desk = text(client.get("/desk").get_data(as_text=True))
    assert "3 files refused by the gateway" in desk


def test_no_refused_files_shows_the_empty_state(app, client, login_as) -> None:  # noqa: ANN001
    login_as("am_radiology")
    page = text(client.get("/desk/arrivals").get_data(as_text=True))
    assert "The gateway has refused no files in the last 15 days." in page
    assert "refused by the gateway" not in text(client.get("/desk").get_data(as_text=True))


def test_a_requester_cannot_see_refused_files(refused, client, login_as) -> None:
    login_as("requester")
    response = client.get("/desk/arrivals")
    assert response.status_code == 403
    assert "SND-77" not in response.get_data(as_text=True)


def test_refused_files_are_purged_15_days_after_arrival(refused, client, login_as) -> None:
    no_study, truncated = refused["no_study"], refused["truncated"]
    no_study.received_at = utcnow() - timedelta(days=15, minutes=1)
    truncated.received_at = utcnow() - timedelta(days=14, hours=23)  # not yet
    db.session.commit()
    gone = Path(no_study.path)

    assert purge_quarantine() == 1
    assert purge_quarantine() == 0  # idempotent
    assert not gone.exists() and not gone.with_name(gone.stem + ".reason.txt").exists()
    assert Path(truncated.path).exists()
    by_id = {r.id: r for r in rows()}
    assert by_id[no_study.id].purged_at is not None and by_id[truncated.id].purged_at is None
    events = list(db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == Action.PURGE.value)))
    assert [e.detail for e in events] == [
        f"quarantined file {no_study.id} (refused by the gateway) purged after 15 days"
    ]

    login_as("analyst")
    page = text(client.get("/desk/arrivals").get_data(as_text=True))
    assert "RADSENDER" not in page and "missing Study Instance UID" not in page
    assert "truncated" in page
    assert "2 files refused by the gateway" in text(client.get("/desk").get_data(as_text=True))


def test_a_refusal_still_answers_the_sender_when_recording_fails(app, tmp_path: Path) -> None:  # noqa: ANN001
    """The database down: the sender still gets its failure status, the reason file stays."""

    def broken(path, info) -> None:  # noqa: ANN001
        raise RuntimeError("database down")

    with GatewaySCP(AET, 0, tmp_path / "inbox", tmp_path / "quarantine", config=QUICK,
                    on_quarantined=broken) as scp:
        (path,) = study(tmp_path / "src", n_per_series=1)
        ds = dcmread(path)
        del ds.PatientID
        (status,) = store(Node(AET, "127.0.0.1", scp.port), ds)
    assert status.Status == STATUS_MISSING_ATTRIBUTE
    assert len(list((tmp_path / "quarantine").glob("*.reason.txt"))) == 1


@pytest.mark.slow
def test_worker_py_gateway_records_what_it_refuses(worker_gateway: Node, tmp_path: Path) -> None:
    """worker.py's own `run_gateway`, as the pool starts it, against the test's database."""
    (path,) = study(tmp_path / "src", n_per_series=1, patient_id="SND-88")
    ds = dcmread(path)
    del ds.StudyInstanceUID
    (status,) = store(worker_gateway, ds)
    assert status.Status == STATUS_MISSING_ATTRIBUTE
    (row,) = rows()  # recorded before the status was sent
    assert (row.sender_ae, row.patient_id, row.reason) == (QUICK.ae_title, "SND-88", "missing Study Instance UID")
    assert Path(row.path).parent == tmp_path / "data" / "gateway" / "quarantine"
