"""E-mail through the outbox and the maintenance queue (guideline 2.3 g, 2.6 b; issue 6).

Mail is delivered to a real SMTP server (aiosmtpd) started by the test, through a real
RQ worker (SimpleWorker, burst mode) on the test run's real Redis. Time is moved with
`app.timeutil.freeze`, never by sleeping.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from flask import Flask
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from app.audit import AuditEvent
from app.extensions import db, redis_conn
from app.requests.models import Institution, Request
from app.requests.statuses import Status
from app.timeutil import freeze
from app.workflow import machine, mail, notices
from app.workflow.models import OutboxEmail, OutboxStatus
from tests.conftest import csrf_token, post_form
from tests.forms_data import valid_export, valid_import

S = Status
T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
REQUESTER_MAIL = valid_import()["contact_email"]  # priya.shah@uhl-tr.nhs.uk
IMPORT_TO_DELIVERED = (S.ACCEPTED, S.DOWNLOAD_REQUEST, S.DOWNLOADING, S.DELIVERED)


# --- helpers and fixtures (also used by test_scheduled.py) ---------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list = []
        self.refuse: set[str] = set()  # recipients this server refuses for good (550)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201, N802
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: recipient address rejected: user unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802 - aiosmtpd API
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        return [BytesParser(policy=policy.default).parsebytes(e.content) for e in self.envelopes]


class SmtpServer:
    """A real SMTP server on 127.0.0.1 that the test can take down and bring back.

    While it is down its port stays held by a bound socket that does not listen: the desk's
    connection is refused, as by a server that is down, and no other test process (the
    suite runs several) can be given the port and take this desk's mail (seen once: two
    tests on two workers, one port, each with the other's mail)."""

    def __init__(self) -> None:
        self._hold: socket.socket | None = None
        self.port = self._hold_port(0)
        self.inbox = Inbox()
        self._controller: Controller | None = None

    def _hold_port(self, port: int) -> int:
        hold = socket.socket()
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's closed connections linger
        hold.bind(("127.0.0.1", port))
        self._hold = hold
        return hold.getsockname()[1]

    def start(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            self._hold_port(self.port)

    def close(self) -> None:
        self.stop()
        if self._hold is not None:
            self._hold.close()
            self._hold = None


@pytest.fixture
def smtp(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """The desk configured for an SMTP server on a free port; the test starts it."""
    server = SmtpServer()
    monkeypatch.setattr(
        app.config["IEP_SETTINGS"],
        "smtp",
        {"host": "127.0.0.1", "port": str(server.port), "from": "iep-desk@uhl-tr.nhs.uk",
         "starttls": "0"},
    )
    yield server
    server.close()


@pytest.fixture
def maintenance(app: Flask) -> Queue:
    """The real maintenance queue, emptied of anything an earlier test left behind."""
    conn = redis_conn()
    queue = Queue("maintenance", connection=conn)
    for registry in (queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                     queue.scheduled_job_registry, queue.deferred_job_registry):
        for job_id in registry.get_job_ids():
            registry.remove(job_id, delete_job=True)
    queue.empty()
    return queue


def run_jobs(queue: Queue) -> None:
    """Run everything queued, in this process, with a real RQ worker (burst mode)."""
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def outbox() -> list[OutboxEmail]:
    """Every outbox row as the database has it now (ends the test's read transaction)."""
    db.session.commit()
    return list(db.session.scalars(sa.select(OutboxEmail).order_by(OutboxEmail.id)))


def as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def submit(client, form: dict[str, str], url: str = "/requests/new/import", exam: str = "") -> Request:  # noqa: ANN001
    """Submit a form as the signed-in requester; the new request.

    `exam` names a different examination, for a test that submits several requests for
    the same patient (the same one twice is refused as a duplicate).
    """
    if exam:
        form = {**form, "exams-0-description": exam, "exams-0-exam_code": ""}
    response = post_form(client, url, form)
    assert response.status_code == 302, response.get_data(as_text=True)
    call_ref = response.headers["Location"].split("/requests/")[1].split("?")[0]
    db.session.commit()
    return db.session.scalar(sa.select(Request).where(Request.call_ref == call_ref))


def move(req: Request, *statuses: Status, actor_id: int | None = None, **kwargs: str) -> None:
    """Walk `req` through `statuses` with the status machine, committing once at the end."""
    for status in statuses:
        machine.transition(req, status, actor_id=actor_id, actor="" if actor_id else "test", **kwargs)
    db.session.commit()


@pytest.fixture
def requester(login_as, pas_patients):  # noqa: ANN001, ANN201
    """A signed-in requester; the form's patient is on the PAS register."""
    return login_as("requester")


@pytest.fixture
def analyst(make_user):  # noqa: ANN001, ANN201
    return make_user("analyst")


# --- (a) delivered through a real worker to a real SMTP server -------------------------


def test_delivered_import_emails_the_requester_with_the_call_reference(
    client, requester, analyst, smtp, maintenance
):
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)

    # The commit itself queued the delivery job: nothing else enqueued it.
    assert maintenance.job_ids == ["mail-1"]
    run_jobs(maintenance)

    [envelope] = smtp.inbox.envelopes
    assert envelope.rcpt_tos == [REQUESTER_MAIL]
    assert envelope.mail_from == "iep-desk@uhl-tr.nhs.uk"
    [msg] = smtp.inbox.messages
    assert msg["Subject"] == f"{req.call_ref}: images delivered"
    body = msg.get_content()
    assert req.call_ref in body
    assert "available on PACS" in body
    assert "SMITH, Margaret" in body  # the requester asked for this patient
    assert "SMITH" not in msg["Subject"] and "S1234567" not in msg["Subject"]
    assert msg["Message-ID"].startswith("<outbox-1.")

    [row] = outbox()
    assert row.status == OutboxStatus.SENT.value
    assert row.sent_at is not None and row.attempts == 1 and row.last_error == ""
    assert Job.fetch("mail-1", connection=maintenance.connection).get_status() == JobStatus.FINISHED


def test_each_notice_goes_to_the_requester_with_its_own_words(client, requester, analyst):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="Please give the exam date of the CT.")
    with freeze(T0 + timedelta(minutes=1)):
        move(req, S.DECLINED, actor_id=analyst.id, note="", decline_reason="not_found")
    with freeze(T0 + timedelta(minutes=2)):
        move(req, S.CANCELLED, actor_id=analyst.id, note="Withdrawn by the requester.")
    rows = outbox()
    assert [r.subject for r in rows] == [
        f"{req.call_ref}: details needed for your image request",
        f"{req.call_ref}: your image request was declined",
        f"{req.call_ref}: your image request was cancelled",
    ]
    assert {r.to_addr for r in rows} == {REQUESTER_MAIL}
    assert "Please give the exam date of the CT." in rows[0].body
    assert "14 days" in rows[0].body
    assert "The requested study does not exist at that organisation" in rows[1].body
    assert "Withdrawn by the requester." in rows[2].body
    assert all(r.request_id == req.id and r.status == OutboxStatus.PENDING.value for r in rows)


def test_completed_sends_no_second_mail_the_delivered_notice_was_the_requesters(client, requester, analyst):
    # Issue 13.5: Completed is "requester notified" (DESIGN); its own mail would tell them twice.
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    with freeze(T0 + timedelta(minutes=5)):
        move(req, S.COMPLETED, actor_id=analyst.id)
    [delivered] = outbox()
    assert delivered.subject == f"{req.call_ref}: images delivered" and delivered.event == "Delivered"
    assert req.call_ref in delivered.body and "available on PACS" in delivered.body


# --- (b) SMTP down: kept, retried after backoff, delivered once -------------------------


def test_smtp_down_keeps_the_mail_and_a_later_flush_delivers_it_exactly_once(
    client, requester, analyst, smtp, maintenance
):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
        run_jobs(maintenance)  # nothing listens on the SMTP port yet

    [row] = outbox()
    assert row.status == OutboxStatus.PENDING.value
    assert row.attempts == 1
    assert "ConnectionRefused" in row.last_error
    assert as_utc(row.next_attempt_at) == T0 + timedelta(minutes=1)
    failed = Job.fetch("mail-1", connection=maintenance.connection)
    assert failed.get_status() == JobStatus.FAILED  # RQ shows the failure too

    smtp.start()
    with freeze(T0 + timedelta(seconds=30)):  # not due yet: backoff holds
        assert mail.flush_outbox() == 0
    with freeze(T0 + timedelta(minutes=2)):
        assert mail.flush_outbox() == 1
        run_jobs(maintenance)
        # Flushing again, or running the job again, sends nothing more.
        assert mail.flush_outbox() == 0
        assert mail.deliver(row.id) == OutboxStatus.SENT.value
        run_jobs(maintenance)

    assert len(smtp.inbox.envelopes) == 1
    assert smtp.inbox.messages[0]["Subject"] == f"{req.call_ref}: images delivered"
    [row] = outbox()
    assert row.status == OutboxStatus.SENT.value and row.attempts == 2 and row.last_error == ""


def test_no_database_transaction_is_held_open_while_smtp_talks(client, requester, analyst, smtp, monkeypatch):
    smtp.start()
    seen = []
    real_send = mail.send_smtp

    def watching(*args, **kwargs):
        seen.append(db.session().in_transaction())  # the job's own session
        real_send(*args, **kwargs)

    monkeypatch.setattr(mail, "send_smtp", watching)
    req = submit(client, valid_import())
    move(req, S.CANCELLED, actor_id=analyst.id, note="Duplicate.")
    [row] = outbox()
    assert mail.deliver(row.id) == OutboxStatus.SENT.value
    assert seen == [False] and len(smtp.inbox.envelopes) == 1


def test_backoff_grows_and_is_capped():
    assert [mail.backoff(n).total_seconds() / 60 for n in range(1, 9)] == [1, 2, 5, 10, 30, 30, 30, 30]


def test_a_failed_send_never_records_the_smtp_password(app, client, requester, analyst, smtp, monkeypatch):
    monkeypatch.setitem(app.config["IEP_SETTINGS"].smtp, "username", "desk")
    monkeypatch.setitem(app.config["IEP_SETTINGS"].smtp, "password", "hunter2-secret")

    def refuse(*_args, **_kwargs):
        raise OSError("auth failed for desk:hunter2-secret")

    monkeypatch.setattr(mail, "send_smtp", refuse)
    req = submit(client, valid_import())
    move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="Which hospital?")
    [row] = outbox()
    with pytest.raises(mail.DeliveryFailed):
        mail.deliver(row.id)
    [row] = outbox()
    assert row.attempts == 1 and "hunter2" not in row.last_error and "***" in row.last_error


def test_redis_down_at_commit_loses_nothing(app, client, requester, analyst, maintenance, monkeypatch):
    req = submit(client, valid_import())
    monkeypatch.setitem(app.config, "REDIS_URL_RESOLVED", "unix:///nonexistent/iep-redis.sock")
    app.extensions.pop("iep_redis", None)
    try:
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="Which hospital?")  # does not raise
    finally:
        app.extensions.pop("iep_redis", None)
        monkeypatch.undo()
    [row] = outbox()
    assert row.status == OutboxStatus.PENDING.value and row.attempts == 0
    assert maintenance.job_ids == []

    assert mail.flush_outbox() == 1  # Redis is back: the periodic flush finds the row
    run_jobs(maintenance)
    [row] = outbox()
    assert row.status == OutboxStatus.SENT.value


def test_a_rolled_back_change_queues_no_mail(client, requester, analyst, maintenance):
    req = submit(client, valid_import())
    machine.transition(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="x")
    db.session.flush()
    db.session.rollback()
    db.session.commit()
    assert outbox() == []
    assert maintenance.job_ids == []


# --- (c) dedup -------------------------------------------------------------------------


def test_the_same_notice_is_queued_once(client, requester, analyst, maintenance):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="Which hospital?")
        notices.on_transition(req, S.NEW, S.AWAITING_DETAILS)  # the same change, again
        db.session.commit()
    assert len(outbox()) == 1
    assert mail.queue_email(REQUESTER_MAIL, "x", "cancelled", request=req, dedup_key="k1",
                            call_ref=req.call_ref) is not None
    assert mail.queue_email(REQUESTER_MAIL, "x", "cancelled", request=req, dedup_key="k1",
                            call_ref=req.call_ref) is None  # same key, same transaction
    db.session.commit()
    assert mail.queue_email(REQUESTER_MAIL, "x", "cancelled", request=req, dedup_key="k1",
                            call_ref=req.call_ref) is None  # same key, already saved
    db.session.commit()
    assert len(outbox()) == 2
    assert maintenance.job_ids == ["mail-1", "mail-2"]  # each mail queued once


def test_asking_for_details_a_second_time_sends_a_second_mail(client, requester, analyst):
    req = submit(client, valid_import())
    with freeze(T0):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="Which hospital?")
    with freeze(T0 + timedelta(hours=1)):
        move(req, S.NEW, actor_id=analyst.id)
    with freeze(T0 + timedelta(hours=2)):
        move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note="And the exam date?")
    rows = outbox()
    assert [r.body.count("Which hospital?") for r in rows] == [1, 0]
    assert "And the exam date?" in rows[1].body


# --- (d) export: the receiving institution and the requester ----------------------------


def test_delivered_export_emails_the_receiving_site_and_the_requester(
    client, requester, analyst, smtp, maintenance
):
    form = valid_export()
    db.session.add(Institution(name=form["institution_name"], email="imaging@kgh.nhs.uk"))
    db.session.commit()
    smtp.start()
    req = submit(client, form, "/requests/new/export")
    assert req.institution is not None
    move(req, S.ACCEPTED, S.UPLOADING, S.DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)

    by_rcpt = {e.rcpt_tos[0]: m for e, m in zip(smtp.inbox.envelopes, smtp.inbox.messages, strict=True)}
    assert sorted(by_rcpt) == sorted([REQUESTER_MAIL, "jane.rowe@kgh.nhs.uk", "imaging@kgh.nhs.uk"])
    for site in ("jane.rowe@kgh.nhs.uk", "imaging@kgh.nhs.uk"):
        msg = by_rcpt[site]
        assert req.call_ref in msg["Subject"] and req.call_ref in msg.get_content()
        # Mail outside the trust says nothing about the patient.
        text = msg["Subject"] + msg.get_content()
        for identifier in ("Smith", "SMITH", "Margaret", "S1234567", "9990000018", "999 000 0018", "1948"):
            assert identifier not in text
    to_requester = by_rcpt[REQUESTER_MAIL]
    assert to_requester["Subject"] == f"{req.call_ref}: images sent"
    assert "Kettering General Hospital" in to_requester.get_content()
    assert all(r.status == OutboxStatus.SENT.value for r in outbox())


def test_export_via_on_iep_tells_the_site_once(client, requester, analyst):
    req = submit(client, valid_export(), "/requests/new/export")
    with freeze(T0):
        move(req, S.ACCEPTED, S.UPLOADING, S.ON_IEP, actor_id=analyst.id)
    with freeze(T0 + timedelta(hours=1)):
        move(req, S.DELIVERED, actor_id=analyst.id)
    rows = outbox()
    to_site = [r for r in rows if r.to_addr == "jane.rowe@kgh.nhs.uk"]
    to_requester = [r.subject for r in rows if r.to_addr == REQUESTER_MAIL]
    assert len(to_site) == 1
    assert to_requester == [f"{req.call_ref}: images sent", f"{req.call_ref}: images sent"]


# --- (e) development: mail goes to instance/mail -----------------------------------------


def test_without_smtp_host_mail_is_written_under_instance_mail(app, client, requester, analyst, maintenance):
    assert not app.config["IEP_SETTINGS"].smtp.get("host")
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)

    folder = app.config["IEP_SETTINGS"].instance_path / "mail"
    [eml] = list(folder.glob("*.eml"))
    assert eml.name == f"00000001-{req.call_ref}.eml"
    msg = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert msg["To"] == REQUESTER_MAIL and msg["Subject"] == f"{req.call_ref}: images delivered"
    assert req.call_ref in msg.get_content()
    [row] = outbox()
    assert row.status == OutboxStatus.SENT.value


def test_production_without_smtp_host_keeps_the_mail_pending(app, client, requester, analyst, monkeypatch):
    monkeypatch.setattr(app.config["IEP_SETTINGS"], "production", True)
    req = submit(client, valid_import())
    move(req, S.CANCELLED, actor_id=analyst.id, note="Duplicate.")
    [row] = outbox()
    with pytest.raises(mail.DeliveryFailed):
        mail.deliver(row.id)
    [row] = outbox()
    assert row.status == OutboxStatus.PENDING.value and "SMTP_HOST" in row.last_error
    assert not (app.config["IEP_SETTINGS"].instance_path / "mail").exists()


# --- (f) free text cannot add headers ----------------------------------------------------


def test_free_text_cannot_add_headers_or_recipients(client, requester, analyst, smtp, maintenance):
    smtp.start()
    req = submit(client, valid_import())
    hostile = "x\nBcc: evil@example.com\r\nSubject: pwned <script>alert(1)</script>"
    move(req, S.AWAITING_DETAILS, actor_id=analyst.id, note=hostile)
    run_jobs(maintenance)

    [envelope] = smtp.inbox.envelopes
    assert envelope.rcpt_tos == [REQUESTER_MAIL]
    [msg] = smtp.inbox.messages
    assert msg["Bcc"] is None
    assert msg.get_all("Subject") == [f"{req.call_ref}: details needed for your image request"]
    # Text mail carries the text as typed (no HTML escaping), inside the body only.
    body = msg.get_content()
    assert "Bcc: evil@example.com" in body and "<script>alert(1)</script>" in body
    head = envelope.content.split(b"\r\n\r\n", 1)[0]
    assert b"evil@example.com" not in head and b"pwned" not in head


@pytest.mark.parametrize(
    "field, value",
    [
        ("subject", "IEP-2026-000001\nBcc: evil@example.com"),
        ("to", "priya@uhl-tr.nhs.uk\nBcc: evil@example.com"),
        ("to", "priya@uhl-tr.nhs.uk, evil@example.com"),
        ("to", "Priya <priya@uhl-tr.nhs.uk>"),
    ],
    ids=["newline_in_subject", "newline_in_address", "two_addresses", "display_name"],
)
def test_queue_email_refuses_header_injection(client, requester, field, value):
    req = submit(client, valid_import())
    args = {"to": REQUESTER_MAIL, "subject": "ok", field: value}
    with pytest.raises(ValueError):
        mail.queue_email(args["to"], args["subject"], "cancelled", request=req, call_ref=req.call_ref)


def test_email_message_refuses_newlines_in_headers():
    with pytest.raises(ValueError):
        mail.build_message(to="a@example.com", subject="x\nBcc: evil@example.com", body="b",
                           sender="desk@example.com")
    with pytest.raises(ValueError):
        mail.build_message(to="a@example.com\nBcc: evil@example.com", subject="x", body="b",
                           sender="desk@example.com")


def test_a_bad_institution_address_does_not_block_the_status_change(client, requester, analyst):
    form = valid_export()
    db.session.add(Institution(name=form["institution_name"], email="imaging at kgh"))
    db.session.commit()
    req = submit(client, form, "/requests/new/export")
    move(req, S.ACCEPTED, S.UPLOADING, S.DELIVERED, actor_id=analyst.id)
    assert req.status == S.DELIVERED
    assert sorted(r.to_addr for r in outbox()) == sorted([REQUESTER_MAIL, "jane.rowe@kgh.nhs.uk"])


# --- mail refused for good: the desk is told and sends it again ------------------------


def _desk_browser(app: Flask, analyst) -> object:  # noqa: ANN001
    browser = app.test_client()
    post_form(browser, "/login", {"email": analyst.email, "password": "correct-horse-9"})
    return browser


def test_a_refused_address_fails_at_once_and_the_desk_corrects_it_and_sends_again(
    app, client, requester, analyst, smtp, maintenance
):
    smtp.inbox.refuse.add(REQUESTER_MAIL)
    smtp.start()
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    run_jobs(maintenance)

    [row] = outbox()
    assert row.status == OutboxStatus.FAILED.value and row.attempts == 1  # no retry can change a 550
    assert "550" in row.last_error and "user unknown" in row.last_error
    with freeze(utcnow_plus(hours=2)):
        assert mail.flush_outbox() == 0  # a failed mail is not retried behind the desk's back
    assert smtp.inbox.envelopes == []

    desk = _desk_browser(app, analyst)
    page = desk.get("/desk").get_data(as_text=True)
    assert "1 e-mail could not be delivered" in page and 'href="/desk/mail"' in page
    listing = desk.get("/desk/mail").get_data(as_text=True)
    assert req.call_ref in listing and "user unknown" in listing and REQUESTER_MAIL in listing

    token = csrf_token(desk, "/desk/mail")
    bad = desk.post("/desk/mail", data={"csrf_token": token, "mail_id": str(row.id), "to_addr": "priya.shah@"})
    assert bad.status_code == 422
    text = bad.get_data(as_text=True)
    assert "Enter a valid e-mail address" in text and 'value="priya.shah@"' in text  # what was typed is kept
    assert outbox()[0].status == OutboxStatus.FAILED.value

    fixed = "priya.shah2@uhl-tr.nhs.uk"
    done = desk.post("/desk/mail", data={"csrf_token": token, "mail_id": str(row.id), "to_addr": fixed})
    assert done.status_code == 302
    [row] = outbox()
    assert row.status == OutboxStatus.PENDING.value and row.to_addr == fixed
    run_jobs(maintenance)
    [envelope] = smtp.inbox.envelopes
    assert envelope.rcpt_tos == [fixed]
    assert outbox()[0].status == OutboxStatus.SENT.value
    assert "Every e-mail has been delivered" in desk.get("/desk/mail").get_data(as_text=True)
    trail = db.session.scalars(sa.select(AuditEvent.detail).where(AuditEvent.request_id == req.id)).all()
    assert any(f"corrected address (was {REQUESTER_MAIL})" in detail for detail in trail)


def test_a_mail_that_fails_for_a_day_is_given_up_and_shown_to_the_desk(
    app, client, requester, analyst, smtp, maintenance
):
    req = submit(client, valid_import())
    move(req, *IMPORT_TO_DELIVERED, actor_id=analyst.id)
    [row] = outbox()
    row.attempts = mail.MAX_ATTEMPTS - 1  # a day of failures already behind it
    db.session.commit()
    run_jobs(maintenance)  # nothing listens on the SMTP port
    [row] = outbox()
    assert row.status == OutboxStatus.FAILED.value and row.attempts == mail.MAX_ATTEMPTS
    assert "ConnectionRefused" in row.last_error
    queue = _desk_browser(app, analyst).get("/desk").get_data(as_text=True)  # Action Required's banner
    assert "1 e-mail could not be delivered</a>" in queue


def test_a_temporary_refusal_is_retried_not_given_up():
    assert not mail.permanent_failure(smtplib.SMTPRecipientsRefused({"a@b.nhs.uk": (450, b"mailbox busy")}))
    assert mail.permanent_failure(smtplib.SMTPRecipientsRefused({"a@b.nhs.uk": (550, b"no such user")}))
    assert not mail.permanent_failure(ConnectionRefusedError())
    assert not mail.permanent_failure(smtplib.SMTPDataError(451, b"try later"))
    assert mail.permanent_failure(smtplib.SMTPDataError(554, b"rejected"))


def utcnow_plus(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)
