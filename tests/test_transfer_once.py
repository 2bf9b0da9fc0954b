"""One unfinished transfer per request, direction, destination and study set (issue 8.8).

Pressing Send (or "Download to PACS") again, 0.3 s later or at the same instant from a
second browser, starts nothing new and shows the transfer already under way; the database
refuses the second one if both presses get past the check together. Nothing here runs a
transfer: the jobs wait in Redis and the queues are emptied around each test.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from rq import Queue

from app.extensions import db, redis_conn
from app.requests.models import Request
from app.requests.statuses import Status
from app.timeutil import utcnow
from app.transfers import service
from app.transfers.cli import upsert_node
from app.transfers.models import InboundStudy, Transfer, TransferState
from app.workflow.machine import transition
from app.workflow.models import Message
from tests.conftest import csrf_token
from tests.forms_data import valid_export, valid_import
from tests.test_transfers import LANES, _login, _request, clean_queues  # noqa: F401 (a fixture)

STUDY_A, STUDY_B, STUDY_C = (
    "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102", "1.2.826.0.1.3680043.8.498.103"
)


@pytest.fixture
def nodes(app):
    """The local PACS and two remote hospitals, in the register only: no transfer runs here."""
    pacs = upsert_node("UHLPACSWFM01", "UHLPACS", "127.0.0.1", 11112, "local_pacs")
    nuh = upsert_node("NUH Radiology PACS", "NUHPACS", "127.0.0.1", 11113, "remote",
                      "Nottingham University Hospitals NHS Trust")
    kgh = upsert_node("KGH PACS", "KGHPACS", "127.0.0.1", 11114, "remote")
    db.session.commit()
    return pacs, nuh, kgh


def _transfers(req: Request) -> list[Transfer]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Transfer).where(Transfer.request_id == req.id).order_by(Transfer.id)))


def _queued_jobs() -> int:
    return sum(Queue(name, connection=redis_conn()).count for name in LANES)


def _send(browser, req, nodes, *uids, dest=None, headers=None):  # noqa: ANN001, ANN202
    token = csrf_token(browser, f"/requests/{req.call_ref}")
    return browser.post(f"/requests/{req.call_ref}/transfers", headers=headers or {}, data={
        "csrf_token": token, "study_uid": list(uids or (STUDY_A, STUDY_B)), "source_id": str(nodes[0].id),
        "dest_id": str((dest or nodes[1]).id), "priority": "Standard"})


def _send_form(req, nodes):  # noqa: ANN001, ANN202
    """The Send form's URL and fields, read here: the pressing threads touch no ORM object."""
    return f"/requests/{req.call_ref}/transfers", {
        "source_id": str(nodes[0].id), "dest_id": str(nodes[1].id), "priority": "Standard"}


def _download(browser, req):  # noqa: ANN001, ANN202
    token = csrf_token(browser, f"/requests/{req.call_ref}")
    return browser.post(f"/requests/{req.call_ref}/import", data={"csrf_token": token})


def _flashes(browser, response) -> str:  # noqa: ANN001
    """The request page the response sends the browser to, as the analyst sees it."""
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return browser.get(response.headers["Location"]).get_data(as_text=True)


def _together(*presses):  # noqa: ANN002, ANN202
    """Run the presses from threads of their own, released by one barrier; their responses."""
    barrier = threading.Barrier(len(presses))
    responses: list[object] = [None] * len(presses)

    def press(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            responses[n] = presses[n]()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            responses[n] = exc

    threads = [threading.Thread(target=press, args=(n,)) for n in range(len(presses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return responses


@pytest.fixture
def past_the_check_together(monkeypatch):
    """Hold each press just after its look for a transfer under way, until both have
    looked: both find none, so only the database can stop the second."""
    barrier = threading.Barrier(2, timeout=20)
    local = threading.local()  # each request runs in a thread of its own (IsolatedClient)
    real = service.unfinished_twin

    def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        found = real(*args, **kwargs)
        if found is None and not getattr(local, "held", False):
            local.held = True
            barrier.wait()
        return found

    monkeypatch.setattr(service, "unfinished_twin", held)
    return barrier


@pytest.fixture
def export(client, login_as, pas_patients) -> Request:
    login_as("requester")
    return _request(client, "/requests/new/export", valid_export())


@pytest.fixture
def arrived(client, login_as, pas_patients, tmp_path) -> Request:
    """An import whose two studies are on the gateway (On IEP), ready for Download to PACS."""
    login_as("requester")
    req = _request(client, "/requests/new/import", valid_import())
    transition(req, Status.ACCEPTED, actor_id=None, actor="test")
    transition(req, Status.ON_IEP, actor_id=None, actor="test")
    for n, uid in enumerate((STUDY_A, STUDY_B)):
        folder = tmp_path / f"gateway-{n}"
        folder.mkdir()
        for i in range(3):
            (folder / f"{uid}.{i}.dcm").write_bytes(b"x" * 10)
        # The sender released its association long enough ago: the study is complete.
        db.session.add(InboundStudy(study_uid=uid, request_id=req.id, folder=str(folder), instances=3,
                                    last_received_at=utcnow() - timedelta(minutes=5),
                                    sender_done_at=utcnow() - timedelta(minutes=5), sender_released=True))
    db.session.commit()
    return req


def _status_messages(req: Request) -> list[str]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Message.body).where(
        Message.request_id == req.id, Message.body.like("Status changed%")).order_by(Message.id)))


# --- (a) a second press 0.3 s later ----------------------------------------------------------


def test_send_pressed_twice_makes_one_transfer_and_the_second_press_shows_it(
    app, export, make_user, nodes, clean_queues
):
    am = _login(app, make_user, "am_radiology")
    first = _send(am, export, nodes)
    assert first.status_code == 302
    time.sleep(0.3)
    second = _send(am, export, nodes, STUDY_B, STUDY_A, STUDY_A)  # the same set, in another order
    [transfer] = _transfers(export)
    assert second.headers["Location"].endswith(f"/requests/{export.call_ref}#transfer-{transfer.id}")
    page = _flashes(am, second)
    assert (f"Transfer {transfer.id} of these studies to NUH Radiology PACS is already running "
            "(state: queued); nothing new was started.") in page
    assert f'id="transfer-{transfer.id}"' in page
    assert _queued_jobs() == 1
    # From HTMX, the same answer: the browser is sent to the widget, not swapped a 302.
    third = _send(am, export, nodes, headers={"HX-Request": "true"})
    assert third.status_code == 200
    assert third.headers["HX-Redirect"] == f"/requests/{export.call_ref}#transfer-{transfer.id}"
    assert len(_transfers(export)) == 1
    assert f"Transfer {transfer.id} of these studies" in am.get(f"/requests/{export.call_ref}").get_data(as_text=True)
    # The request moved once: New -> Accepted -> Download Request.
    assert _status_messages(export) == ["Status changed from New to Accepted.",
                                        "Status changed from Accepted to Download Request."]


def test_another_study_set_or_destination_is_another_transfer(app, export, make_user, nodes, clean_queues):
    am = _login(app, make_user, "am_radiology")
    _send(am, export, nodes, STUDY_A, STUDY_B)
    _send(am, export, nodes, STUDY_A)  # a subset is another set
    _send(am, export, nodes, STUDY_A, STUDY_B, dest=nodes[2])  # another hospital
    _send(am, export, nodes, STUDY_A, STUDY_B, STUDY_C)
    keys = {(t.dest_node_id, tuple(sorted(t.study_uids))) for t in _transfers(export)}
    assert len(keys) == len(_transfers(export)) == 4


# --- (b) two presses at the same instant -----------------------------------------------------


@pytest.mark.parametrize("race", ["released_together", "both_past_the_check"])
def test_send_pressed_at_the_same_instant_from_two_browsers_makes_one_transfer(
    app, export, make_user, nodes, clean_queues, race, request, caplog
):
    caplog.set_level(logging.INFO, logger="iep.transfers")
    if race == "both_past_the_check":
        request.getfixturevalue("past_the_check_together")
    one, two = _login(app, make_user, "am_radiology"), _login(app, make_user, "analyst")
    url, form = _send_form(export, nodes)

    def press(browser):  # noqa: ANN001, ANN202
        data = {**form, "csrf_token": csrf_token(browser, f"/requests/{export.call_ref}"),
                "study_uid": [STUDY_A, STUDY_B]}
        return lambda: browser.post(url, data=data)

    responses = _together(press(one), press(two))
    assert all(not isinstance(r, Exception) for r in responses), responses
    assert [r.status_code for r in responses] == [302, 302], [r.get_data(as_text=True)[:300] for r in responses]
    [transfer] = _transfers(export)
    assert all(r.headers["Location"].endswith(f"#transfer-{transfer.id}") for r in responses)
    pages = [_flashes(b, r) for b, r in zip((one, two), responses, strict=True)]
    assert sum("Transfer of 2 studies queued." in p for p in pages) == 1
    assert sum(f"Transfer {transfer.id} of these studies to NUH Radiology PACS is already running" in p
               for p in pages) == 1
    assert _queued_jobs() == 1
    if race == "both_past_the_check":  # the unique index stopped the second, not the look-up
        assert "lost a race (IntegrityError)" in caplog.text
    assert _status_messages(export) == ["Status changed from New to Accepted.",
                                        "Status changed from Accepted to Download Request."]


def test_two_study_sets_at_the_same_instant_one_is_asked_to_try_again_nothing_half_done(
    app, export, make_user, nodes, clean_queues, past_the_check_together, monkeypatch, caplog
):
    """Different sets may both run, but both presses change the request at once: the
    loser of the version check is told so, and has changed nothing."""
    caplog.set_level(logging.INFO, logger="iep.transfers")
    one, two = _login(app, make_user, "am_radiology"), _login(app, make_user, "analyst")
    url, form = _send_form(export, nodes)

    def press(browser, uid):  # noqa: ANN001, ANN202
        data = {**form, "csrf_token": csrf_token(browser, f"/requests/{export.call_ref}"), "study_uid": uid}
        return lambda: browser.post(url, data=data)

    responses = _together(press(one, STUDY_A), press(two, STUDY_B))
    assert [getattr(r, "status_code", r) for r in responses] == [302, 302]
    pages = [_flashes(b, r) for b, r in zip((one, two), responses, strict=True)]
    assert sum("Someone changed this request at the same moment, so nothing was started." in p for p in pages) == 1
    assert "lost a race (StaleDataError)" in caplog.text
    assert len(_transfers(export)) == 1 and _queued_jobs() == 1
    assert _status_messages(export) == ["Status changed from New to Accepted.",
                                        "Status changed from Accepted to Download Request."]
    assert db.session.get(Request, export.id).status == Status.DOWNLOAD_REQUEST
    # Trying again works: the other set is another transfer.
    loser = one if "Someone changed" in pages[0] else two
    monkeypatch.undo()  # no more holding at the check
    assert _send(loser, export, nodes, STUDY_A if loser is one else STUDY_B).status_code == 302
    assert len(_transfers(export)) == 2


# --- (c) Download to PACS --------------------------------------------------------------------


def test_download_to_pacs_pressed_twice_makes_one_transfer(app, arrived, make_user, nodes, clean_queues):
    analyst = _login(app, make_user, "analyst")
    assert _download(analyst, arrived).status_code == 302
    time.sleep(0.3)
    second = _download(analyst, arrived)
    [transfer] = _transfers(arrived)
    assert transfer.instances_total == 6 and len(transfer.study_uids) == 2
    page = _flashes(analyst, second)
    assert (f"Transfer {transfer.id} of these studies to PACS (UHLPACSWFM01) is already running "
            "(state: queued)") in page
    assert second.headers["Location"].endswith(f"#transfer-{transfer.id}")
    assert _queued_jobs() == 1


@pytest.mark.parametrize("race", ["released_together", "both_past_the_check"])
def test_download_to_pacs_at_the_same_instant_makes_one_transfer(
    app, arrived, make_user, nodes, clean_queues, race, request, caplog
):
    caplog.set_level(logging.INFO, logger="iep.transfers")
    if race == "both_past_the_check":
        request.getfixturevalue("past_the_check_together")
    one, two = _login(app, make_user, "analyst"), _login(app, make_user, "analyst")
    url = f"/requests/{arrived.call_ref}/import"
    tokens = {b: csrf_token(b, f"/requests/{arrived.call_ref}") for b in (one, two)}
    responses = _together(*[(lambda b=b: b.post(url, data={"csrf_token": tokens[b]})) for b in (one, two)])
    assert [getattr(r, "status_code", r) for r in responses] == [302, 302]
    [transfer] = _transfers(arrived)
    pages = [_flashes(b, r) for b, r in zip((one, two), responses, strict=True)]
    assert sum("Download to PACS queued." in p for p in pages) == 1
    assert sum(f"Transfer {transfer.id} of these studies to PACS (UHLPACSWFM01) is already running" in p
               for p in pages) == 1
    if race == "both_past_the_check":
        assert "lost a race (IntegrityError)" in caplog.text
    assert transfer.instances_total == 6  # the loser's instance rows went with its rollback
    assert db.session.scalar(sa.select(sa.func.count()).select_from(sa.text("transfer_items"))) == 6
    assert _queued_jobs() == 1
    assert _status_messages(arrived)[-1] == "Status changed from On IEP to Download Request."
    assert len(_status_messages(arrived)) == 3


def test_download_waiting_for_confirmation_counts_as_under_way(app, arrived, make_user, nodes, clean_queues):
    """Confirm resumes that same transfer: a new press must not start a second one."""
    analyst = _login(app, make_user, "analyst")
    _download(analyst, arrived)
    [transfer] = _transfers(arrived)
    transfer.state = TransferState.WAITING_CONFIRMATION.value  # as the job leaves it on a PAS mismatch
    db.session.commit()
    page = _flashes(analyst, _download(analyst, arrived))
    assert (f"Transfer {transfer.id} of these studies to PACS (UHLPACSWFM01) is already running "
            "(state: waiting for the analyst to confirm the patient)") in page
    assert len(_transfers(arrived)) == 1


# --- (d) only an unfinished transfer blocks ---------------------------------------------------


def test_once_the_transfer_is_finished_send_makes_a_new_one(app, export, make_user, nodes, clean_queues):
    am = _login(app, make_user, "am_radiology")
    _send(am, export, nodes)
    [first] = _transfers(export)
    for state in (TransferState.RUNNING, TransferState.VERIFYING):
        first.state = state.value
        db.session.commit()
        assert "is already running (state: " + state.value + ")" in _flashes(am, _send(am, export, nodes))
        assert len(_transfers(export)) == 1
    first.state = TransferState.DELIVERED.value  # as the worker leaves it
    db.session.commit()
    assert "Transfer of 2 studies queued." in _flashes(am, _send(am, export, nodes))
    second = _transfers(export)[-1]
    assert second.id != first.id and second.state == TransferState.QUEUED.value
    # Cancelled with the widget's Cancel button: Send again is a new transfer.
    token = csrf_token(am, f"/requests/{export.call_ref}")
    assert am.post(f"/transfers/{second.id}/cancel", data={"csrf_token": token}).status_code == 302
    assert "Transfer of 2 studies queued." in _flashes(am, _send(am, export, nodes))
    third = _transfers(export)[-1]
    third.state = TransferState.FAILED.value  # gave up: Retry resumes it, a new Send is allowed too
    db.session.commit()
    _send(am, export, nodes)
    states = [t.state for t in _transfers(export)]
    assert states == ["delivered", "cancelled", "failed", "queued"]
    # Retry on the failed one while that new Send is queued: shown the queued one, never two.
    token = csrf_token(am, f"/requests/{export.call_ref}")
    response = am.post(f"/transfers/{third.id}/retry", data={"csrf_token": token})
    assert response.status_code == 302
    fourth = _transfers(export)[-1]
    assert f"Transfer {fourth.id} of these studies" in _flashes(am, response)
    assert [t.state for t in _transfers(export)] == ["delivered", "cancelled", "failed", "queued"]


def test_a_download_waiting_for_confirmation_can_be_cancelled_and_then_pressed_again(
    app, arrived, make_user, nodes, clean_queues
):
    analyst = _login(app, make_user, "analyst")
    _download(analyst, arrived)
    [waiting] = _transfers(arrived)
    waiting.state = TransferState.WAITING_CONFIRMATION.value  # the sender's details differ
    db.session.commit()
    page = analyst.get(f"/transfers/{waiting.id}").get_data(as_text=True)
    assert f"/transfers/{waiting.id}/cancel" in page  # the analyst who will not confirm can stop it
    token = csrf_token(analyst, f"/requests/{arrived.call_ref}")
    assert analyst.post(f"/transfers/{waiting.id}/cancel", data={"csrf_token": token}).status_code == 302
    db.session.expire_all()
    assert db.session.get(Transfer, waiting.id).state == TransferState.CANCELLED.value
    _download(analyst, arrived)
    assert [t.state for t in _transfers(arrived)] == ["cancelled", "queued"]


def test_once_the_download_is_finished_download_to_pacs_makes_a_new_one(
    app, arrived, make_user, nodes, clean_queues
):
    analyst = _login(app, make_user, "analyst")
    _download(analyst, arrived)
    [first] = _transfers(arrived)
    first.state = TransferState.FAILED.value
    db.session.commit()
    assert "Download to PACS queued." in _flashes(analyst, _download(analyst, arrived))
    assert [t.state for t in _transfers(arrived)] == ["failed", "queued"]


def test_the_database_refuses_a_second_unfinished_transfer_of_the_same_set(app, export, nodes):
    """The rule holds below the web: the partial unique index, not only the check."""
    from sqlalchemy.exc import IntegrityError

    def make(uids, dest=nodes[1]):  # noqa: ANN001, ANN202
        t = Transfer(request_id=export.id, direction="outbound", priority="Standard", dest_node_id=dest.id,
                     dest_key=dest.id, study_uids=uids, study_key=service.study_key(uids))
        db.session.add(t)
        db.session.commit()
        return t

    first = make([STUDY_A, STUDY_B])
    with pytest.raises(IntegrityError):
        make([STUDY_B, STUDY_A])
    db.session.rollback()
    make([STUDY_A, STUDY_B], dest=nodes[2])
    first.state = TransferState.DELIVERED.value
    db.session.commit()
    make([STUDY_B, STUDY_A])
    with pytest.raises(service.TransferUnderWay):
        service.create_transfer(request=export, direction=service.Direction.OUTBOUND, priority="Standard",
                                source=nodes[0], dest=nodes[1], study_uids=[STUDY_A, STUDY_B], user_id=None)


# --- the migration fills the keys of the transfers already on record ---------------------------


def _filler(column: sa.Column) -> object:
    """A value for a NOT NULL column the test does not care about."""
    if isinstance(column.type, sa.JSON):
        return []
    if isinstance(column.type, sa.DateTime):
        return datetime.now(UTC)
    return {int: 0, str: "", bool: False}[column.type.python_type]


def test_migration_fills_the_keys_of_existing_transfers_and_spares_legacy_twins(tmp_path, redis_url):
    from datetime import date

    from flask_migrate import downgrade, upgrade
    from sqlalchemy.exc import IntegrityError

    from app.auth.models import Role, User
    from app.patients.models import Patient
    from app.requests.statuses import Kind
    from tests.test_migrations import desk_on, empty_database

    with empty_database(tmp_path) as url, desk_on(url, redis_url, tmp_path):
        upgrade()
        user = User(email="a@test.uhl", name="A", role=Role.ANALYST, phone="", department="")
        user.set_password("correct-horse-9")
        patient = Patient(s_number="S1234567", family_name="SMITH", given_name="Margaret", dob=date(1948, 3, 14))
        req = Request(call_ref="IEP-2026-000009", kind=Kind.EXPORT, requester=user, patient=patient,
                      s_number="S1234567", family_name="Smith", given_name="Margaret", dob=date(1948, 3, 14),
                      contact_name="Dr Shah")
        node = upsert_node("NUH Radiology PACS", "NUHPACS", "127.0.0.1", 11113, "remote")
        db.session.add_all([user, patient, req])
        db.session.commit()
        request_id, node_id = req.id, node.id
        db.session.remove()

        downgrade(revision="0003")  # before the rule: the double-press bug's twins exist
        with db.engine.begin() as conn:
            table = sa.Table("transfers", sa.MetaData(), autoload_with=conn)
            assert "study_key" not in table.c
            filler = {c.name: _filler(c) for c in table.c if not c.nullable and not c.primary_key}
            rows = [  # (request, direction, dest, state, study uids)
                (request_id, "outbound", node_id, "running", [STUDY_B, STUDY_A]),
                (request_id, "outbound", node_id, "queued", [STUDY_A, STUDY_B]),  # a twin of the first
                (request_id, "pull", None, "delivered", [STUDY_C]),
                (request_id, "outbound", node_id, "failed", [STUDY_A, STUDY_B]),
                (None, "outbound", node_id, "queued", [STUDY_A]),
                (None, "outbound", node_id, "queued", [STUDY_A]),  # no request: not covered
            ]
            for request_id_, direction, dest, state, uids in rows:
                conn.execute(table.insert().values(
                    {**filler, "request_id": request_id_, "direction": direction, "dest_node_id": dest,
                     "state": state, "study_uids": uids, "priority": "Standard"}))
        upgrade()  # through 0006, which fills the keys

        keys = db.session.execute(sa.select(Transfer.id, Transfer.study_key, Transfer.dest_key)
                                  .order_by(Transfer.id)).all()
        ab, c, a = service.study_key([STUDY_A, STUDY_B]), service.study_key([STUDY_C]), service.study_key([STUDY_A])
        assert [tuple(k) for k in keys] == [
            (1, ab, node_id), (2, ab, -2), (3, c, 0), (4, ab, node_id), (5, a, node_id), (6, a, node_id)]
        # From now on the database keeps the rule: no third unfinished copy of the first.
        db.session.add(Transfer(request_id=request_id, direction="outbound", priority="Standard",
                                dest_node_id=node_id, dest_key=node_id, study_uids=[STUDY_A, STUDY_B], study_key=ab))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


def test_the_dispatcher_does_not_queue_again_a_transfer_the_web_queued_while_it_worked(app, nodes, clean_queues,
                                                                                      monkeypatch):
    """Found by bench/trauma.py: the dispatcher selects due transfers with no job; each
    enqueue commits, which reloads the rest; one the web queued meanwhile came back with the
    web's job id, and a compare-and-set on that id won: two jobs for one transfer."""
    from app.transfers import jobs

    pacs, leeds, _york = nodes
    first, second = (service.create_transfer(request=None, direction="outbound", priority="Standard", source=pacs,
                                             dest=leeds, study_uids=[uid], user_id=None) for uid in (STUDY_A, STUDY_B))
    db.session.commit()
    real_enqueue = service.enqueue
    web_job = []

    def dispatcher_enqueue(transfer, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if not web_job:  # the web presses Send on the second one while the dispatcher works
            with app.app_context():
                web_job.append(real_enqueue(db.session.get(Transfer, second.id), seen_job_id=""))
                db.session.remove()
        return real_enqueue(transfer, **kwargs)

    monkeypatch.setattr(service, "enqueue", dispatcher_enqueue)
    assert jobs._dispatch_due(200) == 1  # the first; the second was the web's
    assert web_job[0] is not None
    outbound = Queue("outbound", connection=redis_conn())
    db.session.expire_all()
    assert sorted(outbound.job_ids) == sorted([db.session.get(Transfer, first.id).job_id, web_job[0]])
    assert db.session.get(Transfer, second.id).job_id == web_job[0]


# --- what Send says: only "queued" when a job exists (issue 11.16) ----------------------------


@pytest.fixture
def redis_down(monkeypatch, tmp_path):
    """The transfer queue does not answer: every enqueue meets a Redis nobody listens on."""
    from redis import Redis

    dead = Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), socket_connect_timeout=0.5)
    monkeypatch.setattr(service, "queue", lambda name: Queue(name, connection=dead))


def test_with_redis_down_send_says_saved_not_queued_and_the_transfer_waits_without_a_job(
    app, export, make_user, nodes, clean_queues, redis_down
):
    am = _login(app, make_user, "am_radiology")
    page = _flashes(am, _send(am, export, nodes))
    assert "queued." not in page
    assert ("Transfer of 2 studies saved, but not queued: the transfer queue is not answering. "
            "It starts by itself when the queue is back") in page
    [transfer] = _transfers(export)
    assert transfer.state == TransferState.QUEUED.value and transfer.job_id == ""  # the dispatcher's to queue


def test_with_redis_down_download_to_pacs_says_saved_not_queued(
    app, arrived, make_user, nodes, clean_queues, redis_down
):
    analyst = _login(app, make_user, "analyst")
    page = _flashes(analyst, _download(analyst, arrived))
    assert "Download to PACS queued." not in page
    assert "Download to PACS saved, but not queued: the transfer queue is not answering." in page
    assert [t.job_id for t in _transfers(arrived)] == [""]


def test_a_batch_send_outside_its_window_says_when_it_starts(app, export, make_user, nodes, clean_queues):
    from app.timeutil import LONDON

    now = utcnow().astimezone(LONDON)
    opens = now + timedelta(hours=2)
    app.config["IEP_SETTINGS"].batch_window = f"{opens:%H:%M}-{now + timedelta(hours=3):%H:%M}"
    am = _login(app, make_user, "am_radiology")
    token = csrf_token(am, f"/requests/{export.call_ref}")
    page = _flashes(am, am.post(f"/requests/{export.call_ref}/transfers", data={
        "csrf_token": token, "study_uid": [STUDY_A], "source_id": str(nodes[0].id),
        "dest_id": str(nodes[1].id), "priority": "Batch"}))
    day = "today" if opens.date() == now.date() else f"on {opens:%d/%m/%Y}"
    assert (f"Transfer of 1 study saved. It is a Batch transfer: it starts when the overnight window "
            f"opens, at {opens:%H:%M} {day}.") in page
    assert "queued." not in page and _queued_jobs() == 0


def test_a_damaged_report_pdf_is_named_at_send_and_nothing_is_queued(app, export, make_user, nodes, clean_queues):
    """The Send form's report upload is parsed, not only sniffed (issue 11.15)."""
    am = _login(app, make_user, "am_radiology")
    token = csrf_token(am, f"/requests/{export.call_ref}")
    page = _flashes(am, am.post(f"/requests/{export.call_ref}/transfers", content_type="multipart/form-data", data={
        "csrf_token": token, "study_uid": [STUDY_A], "source_id": str(nodes[0].id), "dest_id": str(nodes[1].id),
        "priority": "Standard", "report_pdf": (io.BytesIO(b"%PDF-1.7\n1 0 obj << /Type /Catalog"), "report.pdf")}))
    assert "The report PDF is damaged and cannot be read: attach it again, or paste the report." in page
    assert _transfers(export) == [] and _queued_jobs() == 0
    assert not list((app.config["IEP_SETTINGS"].storage_root / "reports").glob("*.pdf"))
