"""An import's fix-up and RIS entries, shown on the request page (issue 13.9), through the
real path: DCMTK storescu pushes three studies to the gateway of a worker pool
(`worker.py`, its own processes), the analyst presses Download to PACS, the pool fixes
them up, stores them to the PACS Orthanc and writes one RIS entry each. The exam code
comes from the sender's study, else from the request's matching exam line (the requester's
MHEAD for an MR head study dated a day off), else the entry is flagged; the request page
shows, per study, the sender's Patient ID and issuer -> the S number, and each entry."""

from __future__ import annotations

import re
import time
import warnings
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from rq import Queue

from app.dicom import scu
from app.dicom.scu import Node
from app.dicom.synth import make_study
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers.cli import upsert_node
from app.transfers.models import InboundStudy, RisEntry, Transfer, TransferState
from app.workflow.machine import transition
from tests.conftest import post_form
from tests.dicom_peers import QUICK, OrthancPeer, run_storescu
from tests.forms_data import valid_import
from tests.pool import kill_pool, start_pool, wait_for

LANES = "inbound-bluelight,inbound=1"


def _procedure_code(value: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99NUH", meaning
    return Sequence([item])


def _study(folder: Path, day: str, description: str, modality: str, **extra: object) -> list[Path]:
    """A study as Nottingham sends it: their own Patient ID and issuer."""
    return make_study(folder, patient_id="NUH998877", patient_name="SMITH^MARGARET", birth_date="19480314",
                      study_date=day, description=description, modality=modality, n_series=1, n_per_series=2,
                      rows=16, cols=16, accession=f"NUH-{day}",
                      extra={"IssuerOfPatientID": "NUH", **extra})


def _uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _import_request(client, login_as) -> Request:
    """The requester names an MRI head (MHEAD) on 15/09/2026 and a CT chest (CTHOR) on 20/09/2026."""
    login_as("requester")
    response = post_form(client, "/requests/new/import", {
        **valid_import(),
        "exams-0-exam_date": "2026-09-15", "exams-0-description": "MRI head", "exams-0-exam_code": "MHEAD",
        "exams-1-exam_date": "2026-09-20", "exams-1-description": "CT chest", "exams-1-exam_code": "CTHOR",
    })
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]
    req = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    assert [e.exam_code for e in req.exams] == ["MHEAD", "CTHOR"]
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    db.session.commit()
    return req


def _wait_for_gateway(node: Node, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            scu.echo(node, config=QUICK)
            return
        except Exception:  # noqa: BLE001 - not listening yet
            if time.monotonic() > deadline:
                raise AssertionError("the pool's gateway never answered C-ECHO") from None
            time.sleep(0.2)


def _rows(page: str) -> dict[str, str]:
    """The "Filed in PACS and on RIS" table's rows, as text, by the study description."""
    section = page.split('id="filed-title"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r'<tr id="ris-\d+"[^>]*>(.*?)</tr>', section, re.S)
    texts = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip() for row in rows]
    return {text.split(" (")[0]: text for text in texts}


@pytest.mark.slow
def test_an_imports_ris_entries_take_the_exam_lines_code_or_are_flagged_and_the_page_shows_the_fix_up(
    app, client, login_as, make_user, pas_patients, orthanc: OrthancPeer, gateway_port, database_url, redis_url,
    tmp_path,
):
    for name in ("inbound-bluelight", "inbound"):
        Queue(name, connection=redis_conn()).empty()
    settings = app.config["IEP_SETTINGS"]
    settings.arrival_quiet_seconds = 0  # the web side's view of "complete": as the pool's
    upsert_node("UHLPACSWFM01", orthanc.node.ae_title, "127.0.0.1", orthanc.node.port, "local_pacs")
    db.session.commit()
    req = _import_request(client, login_as)
    # A day before the form's date, no procedure code: the requester's MHEAD is the code.
    head = _study(tmp_path / "head", "20260914", "MR HEAD", "MR")
    # The sender's own code wins over the exam line's (guideline 2.3 f).
    chest = _study(tmp_path / "chest", "20260920", "CT CHEST", "CT",
                   ProcedureCodeSequence=_procedure_code("CCHES", "CT Chest"))
    # On no date the form names, a modality it does not name, no code: flagged.
    xray = _study(tmp_path / "xray", "20260601", "XR CHEST", "DX")
    pool = start_pool(app, database_url, redis_url, LANES, IEP_GATEWAY="1", GATEWAY_PORT=str(gateway_port),
                      ARRIVAL_QUIET_SECONDS="0")
    try:
        gateway = Node(settings.gateway_ae_title, "127.0.0.1", gateway_port)
        _wait_for_gateway(gateway)
        pushed = run_storescu(gateway, head + chest + xray, calling_ae="NUHPACS")
        assert pushed.returncode == 0, pushed.stderr
        wait_for(lambda: db.session.get(Request, req.id).status == Status.ON_IEP, 30, "the studies to be On IEP")
        assert db.session.scalar(sa.select(sa.func.count(InboundStudy.id)).where(
            InboundStudy.request_id == req.id)) == 3
        analyst = app.test_client()
        post_form(analyst, "/login", {"email": make_user("analyst").email, "password": "correct-horse-9"})
        page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
        assert "Filed in PACS and on RIS" not in page  # nothing filed yet
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        pressed = analyst.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token})
        assert pressed.status_code == 302, pressed.get_data(as_text=True)[:300]
        transfer = wait_for(lambda: db.session.scalar(sa.select(Transfer).where(
            Transfer.request_id == req.id, Transfer.state.in_([TransferState.DELIVERED, TransferState.FAILED]))),
            90, "the download to PACS to finish")
    finally:
        kill_pool(pool)
    assert transfer.state == TransferState.DELIVERED, transfer.last_error
    for files in (head, chest, xray):  # filed in PACS under the S number
        tags = orthanc.rest(f"/studies/{orthanc.rest_post('/tools/lookup', _uid(files))[0]['ID']}")
        assert tags["PatientMainDicomTags"]["PatientID"] == "S1234567"

    entries = {e.study_uid: e for e in db.session.scalars(sa.select(RisEntry).where(RisEntry.request_id == req.id))}
    assert set(entries) == {_uid(head), _uid(chest), _uid(xray)}
    mr, ct, xr = entries[_uid(head)], entries[_uid(chest)], entries[_uid(xray)]
    assert (mr.exam_code, mr.code_source, mr.code_missing, mr.event_date) == (
        "MHEAD", "exam line", False, date(2026, 9, 14))
    assert "15/09/2026 “MRI head” (same body part, 1 day apart)" in mr.code_note
    assert (ct.exam_code, ct.code_source, ct.code_missing) == ("CCHES", "study", False)
    assert (xr.exam_code, xr.code_source, xr.code_missing, xr.event_date) == ("", "", True, date(2026, 6, 1))
    assert "no exam line of the request matches it" in xr.code_note
    assert {(e.sender_patient_id, e.sender_issuer, e.s_number) for e in entries.values()} == {
        ("NUH998877", "NUH", "S1234567")}

    page = analyst.get(f"/requests/{req.call_ref}").get_data(as_text=True)
    assert "Filed in PACS and on RIS" in page
    assert "1 RIS entry has no exam code." in page
    rows = _rows(page)
    assert list(rows) == ["XR CHEST", "MR HEAD", "CT CHEST"]  # oldest examination first
    assert "NUH998877 (issuer NUH) → S1234567" in rows["MR HEAD"]
    assert "MHEAD from the exam line" in rows["MR HEAD"] and "14/09/2026" in rows["MR HEAD"]
    assert "CCHES from the sender's study" in rows["CT CHEST"].replace("&#39;", "'")
    assert "Exam code missing" in rows["XR CHEST"] and "Enter it on CRIS by hand" in rows["XR CHEST"]
    assert "Exam code missing" not in rows["MR HEAD"] + rows["CT CHEST"]
    # The arrivals table reads as people do, too.
    assert "SMITH, Margaret (NUH998877, issuer NUH, born 14/03/1948)" in page


# --- the migration fills the new columns for entries written before it -------------------------


def _insert(conn, table: str, **values: object) -> int:
    """A row of `table` as the database has it at this revision: the values given, and a
    plain one of the column's type for every other required column. Returns its id."""
    from datetime import datetime

    with warnings.catch_warnings():  # SQLite cannot reflect expression indexes; none is needed here
        warnings.filterwarnings("ignore", message=".*expression-based index")
        reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
    plain = {sa.String: "", sa.Integer: 1, sa.Boolean: False, sa.DateTime: datetime(2026, 1, 1),
             sa.Date: date(2026, 1, 1), sa.JSON: []}
    for column in reflected.columns:
        if column.name in values or column.nullable or column.primary_key:
            continue
        values[column.name] = next(v for kind, v in plain.items() if isinstance(column.type, kind))
    return conn.execute(reflected.insert().values(**values).returning(reflected.c.id)).scalar_one()


@pytest.mark.own_database
def test_0013_fills_the_sender_ids_and_flags_entries_without_a_code(tmp_path, redis_url):
    from flask_migrate import upgrade

    from tests.test_migrations import desk_on, empty_database

    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        upgrade(revision="0012")
        with db.engine.begin() as conn:
            user = _insert(conn, "users", email="r@test.uhl", role="requester")
            patient = _insert(conn, "patients", s_number="S1234567")
            request = _insert(conn, "requests", call_ref="IEP-2026-000001", kind="import", status="Delivered",
                              priority="Standard", requester_id=user, patient_id=patient, s_number="S1234567")
            _insert(conn, "inbound_studies", study_uid="1.2.3", request_id=request, patient_id="NUH998877",
                    issuer_of_patient_id="NUH")
            _insert(conn, "ris_entries", request_id=request, study_uid="1.2.3", exam_code="MHEAD")
            _insert(conn, "ris_entries", request_id=request, study_uid="1.2.4", exam_code="")
        upgrade(revision="0013_transfers")
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT study_uid, sender_patient_id, sender_issuer, code_source, "
                                        "code_missing, code_note FROM ris_entries ORDER BY study_uid")).all()
    assert [(*r[:4], bool(r[4]), r[5]) for r in rows] == [
        ("1.2.3", "NUH998877", "NUH", "exam line", False, ""),
        ("1.2.4", "", "", "", True, ""),
    ]
