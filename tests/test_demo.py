"""The demo a newcomer runs (issue 4, item 9): the DICOM nodes `make run` starts
(scripts/demo_nodes.py, as a process of its own) and `demo seed` registers serve an
export end to end — search the demo PACS from the request page, send a study to the demo
"NUH Radiology PACS", verified there — through the real engine on a real RQ worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from rq import Queue, SimpleWorker

from app.demo import demo_password, demo_patients
from app.dicom import scu
from app.dicom.ae import Node
from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.transfers.models import DicomNode, Transfer, TransferState
from tests.conftest import csrf_token, post_form
from tests.dicom_peers import QUICK, free_port, wait_for_echo
from tests.forms_data import valid_export

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parent.parent
LANES = ["outbound-bluelight", "outbound", "outbound-batch", "inbound-bluelight", "inbound"]


@pytest.fixture
def demo_nodes(app, runner, tmp_path: Path, gateway_port: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """scripts/demo_nodes.py on free ports, and `demo seed` registering them."""
    ports = {"DEMO_PACS_PORT": str(free_port()), "DEMO_REMOTE_PORT": str(free_port()),
             "GATEWAY_PORT": str(gateway_port)}
    for key, value in ports.items():
        monkeypatch.setenv(key, value)  # app.demo.demo_nodes() reads them in `demo seed`
    settings = app.config["IEP_SETTINGS"]
    settings.gateway_port = gateway_port
    settings.dicom_timeout_seconds = 10
    log = tmp_path / "demo-nodes.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "scripts/demo_nodes.py", "--data-dir", str(tmp_path / "nodes")],
                                cwd=ROOT, env={**os.environ, **ports}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for_echo(Node("UHLPACSWFM01", "127.0.0.1", int(ports["DEMO_PACS_PORT"])), proc, log, seconds=90)
        wait_for_echo(Node("NUHPACS", "127.0.0.1", int(ports["DEMO_REMOTE_PORT"])), proc, log)
        seeded = runner.invoke(args=["demo", "seed"])
        assert seeded.exit_code == 0, seeded.output
        for name in ("DEMO_PACS_PORT", "DEMO_REMOTE_PORT"):
            assert f":{ports[name]} " in seeded.output  # the seed registered the ports they listen on
        for name in LANES:
            Queue(name, connection=redis_conn()).empty()
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
@pytest.mark.slow


def test_a_newcomer_exports_a_demo_study_to_the_demo_nuh_node(app, client, login_as, demo_nodes) -> None:
    patient = demo_patients()[0]
    login_as("requester")
    form = valid_export()
    form.update(s_number=patient["s_number"], nhs_number=patient["nhs_number"], family_name=patient["family_name"],
                given_name=patient["given_name"], dob=patient["dob"].isoformat(), gender=patient["gender"],
                address_line1=patient["address_line1"], town=patient["town"], postcode=patient["postcode"])
    response = post_form(client, "/requests/new/export", form)
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    call_ref = response.headers["Location"].split("/")[2].split("?")[0]

    pacs, nuh = (db.session.scalar(sa.select(DicomNode).where(DicomNode.ae_title == aet))
                 for aet in ("UHLPACSWFM01", "NUHPACS"))
    am = app.test_client()
    post_form(am, "/login", {"email": "amrad@demo.uhl", "password": demo_password("amrad@demo.uhl")})
    token = csrf_token(am, f"/requests/{call_ref}")
    found = am.post(f"/requests/{call_ref}/pacs-search", data={"csrf_token": token, "node_id": str(pacs.id)},
                    headers={"HX-Request": "true"}).get_data(as_text=True)
    study_uids = re.findall(r'name="study_uid" value="([0-9.]+)"', found)
    assert len(study_uids) == 2, found[:1500]  # the demo PACS files a CT and a chest X-ray per patient

    response = am.post(f"/requests/{call_ref}/transfers", data={
        "csrf_token": token, "study_uid": study_uids[0], "source_id": str(pacs.id), "dest_id": str(nuh.id),
        "priority": "Blue Light", "report_text": "Demo report."})
    assert response.status_code == 302, response.get_data(as_text=True)[:800]
    conn = redis_conn()
    SimpleWorker([Queue(name, connection=conn) for name in LANES], connection=conn).work(burst=True)

    db.session.expire_all()
    request = db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
    transfer = db.session.scalar(sa.select(Transfer).where(Transfer.request_id == request.id))
    assert transfer.state == TransferState.DELIVERED.value, transfer.last_error
    assert transfer.instances_confirmed == transfer.instances_total > 1
    assert request.status == Status.DELIVERED
    held = scu.find_instances(Node("NUHPACS", nuh.host, nuh.port), study_uids[0], config=QUICK)
    assert len(held) == transfer.instances_total  # the images and the report, at the demo NUH node


def test_demo_seed_refuses_in_production_and_creates_no_account(app) -> None:
    """Issue 11.10: demo accounts have published passwords."""
    import sqlalchemy as sa

    from app.auth.models import User
    from app.extensions import db

    app.config["IEP_SETTINGS"].production = True
    refused = app.test_cli_runner().invoke(args=["demo", "seed"])
    assert refused.exit_code != 0
    assert "demo seed refuses to run with IEP_ENV=production" in refused.output
    assert "password:" not in refused.output
    assert db.session.scalar(sa.select(sa.func.count(User.id))) == 0


def test_demo_seed_prints_every_demo_patient_with_name_dob_and_nhs_number(runner) -> None:
    """Issue 13.12: `make run` shows whom to type into a form, not just S numbers."""
    seeded = runner.invoke(args=["demo", "seed"])
    assert seeded.exit_code == 0, seeded.output
    table = seeded.output[seeded.output.index("Demo PAS patients"):seeded.output.index("Demo DICOM nodes")]
    rows = [line.split() for line in table.splitlines()[1:] if line.strip()]
    assert rows[0] == ["S", "number", "Name", "Date", "of", "birth", "NHS", "number"]
    patients = demo_patients()
    assert len(rows) == 1 + len(patients) and len(patients) >= 7
    for patient, row in zip(patients, rows[1:], strict=True):
        nhs = str(patient["nhs_number"])
        assert row == [patient["s_number"], f"{str(patient['family_name']).upper()},", patient["given_name"],
                       patient["dob"].strftime("%d/%m/%Y"), nhs[:3], nhs[3:6], nhs[6:]], row
    for shown in ("S1000006  山田, 花子", "S1000007  ΠΑΠΑΔΟΠΟΥΛΟΣ, Γιώργος", "05/04/1983", "999 000 0077"):
        assert shown in table, table
    # The columns line up: each date of birth starts where its heading does (the Japanese
    # name takes two terminal columns a letter, so it is padded by width, not length).
    lines = [line for line in table.splitlines()[1:] if line.strip()]
    start = lines[0].index("Date of birth")
    for line, patient in zip(lines[1:], patients, strict=True):
        before = line[: line.index(patient["dob"].strftime("%d/%m/%Y"))]
        assert sum(2 if "\u3000" <= ch <= "\u9fff" else 1 for ch in before) == start, line
