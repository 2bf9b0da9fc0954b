"""E-mail through the outbox table and the `maintenance` queue (DESIGN "Printables and mail").

Three steps, as for every job here (STYLE habit 2):

1. `queue_email(...)` (caller's transaction): renders the plain-text body and adds an
   `OutboxEmail` row. It never commits and never talks to Redis or SMTP, so a status
   change and its notice are saved together or not at all.
2. After the caller commits, a session hook (`_after_commit` below, installed on every
   SQLAlchemy session when this module is imported, which `notices` does) enqueues
   `deliver(id)` for each outbox row inserted by that transaction; a rollback forgets
   them. If Redis is unreachable the hook logs and the rows stay pending:
   `flush_outbox`, run every minute by the cron process, picks up every pending row that
   is due. Nothing relies on the enqueue succeeding.
3. `deliver(outbox_id)` (job body) sends one row by SMTP, or in development (no
   `SMTP_HOST`) writes it as an .eml file under `instance/mail/`. A failure is recorded
   on the row (attempts, last_error, next_attempt_at with backoff) and the row stays
   pending until a later flush sends it: a message is never lost while the SMTP server
   is down.

Delivery is at-least-once: the row is claimed with a short lease before sending (so two
workers never send it at once), but a worker killed between the SMTP server's "250 OK"
and the commit sends it again after the lease; the Message-ID is the same each time, so
mail clients show it once.

Subjects carry the call reference, never patient identifiers (guideline 2.3 g). Bodies
are rendered from `app/templates/mail/<name>.txt` (Jinja does not autoescape .txt, which
is right for text mail); headers are built with `email.message.EmailMessage`, which
refuses CR/LF in a header value, so free text cannot add headers.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import has_app_context, render_template
from redis.exceptions import RedisError

from app import audit
from app.extensions import db, rowcount
from app.queues import MAINTENANCE, job_context, job_label, queue
from app.requests.models import Request
from app.timeutil import utcnow
from app.workflow.models import OutboxEmail, OutboxStatus

log = logging.getLogger("iep.mail")

SMTP_TIMEOUT = 10  # seconds, for connect and for each SMTP command
DEFAULT_FROM = "image-exchange-desk@localhost"
# Minutes to wait after the n-th failed attempt; the last value repeats for ever.
BACKOFF_MINUTES = (1, 2, 5, 10, 30)
MAX_ATTEMPTS = 52  # 1 + 2 + 5 + 10 + 48 x 30 minutes: about a day of trying, then the desk is told
# A claimed row is not due again until this lease ends (or the send records its outcome).
LEASE = timedelta(minutes=5)
FLUSH_BATCH = 500
# A job still "queued"/"started" after this long is presumed lost (PITFALLS "RQ").
STALE_JOB = timedelta(minutes=15)
_INFO_KEY = "iep_outbox_ids"
# One address, no display name, nothing that could close a header or start another.
_ADDRESS = re.compile(r"[^@\s<>,;:\"()\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class DeliveryFailed(RuntimeError):
    """The send failed; the row keeps the reason and is retried by a later flush."""


# --- queueing (caller's transaction) ---------------------------------------------------


def valid_address(addr: str) -> bool:
    return bool(_ADDRESS.fullmatch(addr or ""))


def queue_email(
    to: str,
    subject: str,
    template: str,
    *,
    request: Request | None = None,
    dedup_key: str | None = None,
    event: str | None = None,
    **ctx: object,
) -> OutboxEmail | None:
    """Add an e-mail to the outbox in the caller's transaction (the caller commits).

    `template` names `app/templates/mail/<template>.txt`, rendered with `ctx`. `event`
    says which notice it is, for `notices.on_sent` once it has been sent.
    Returns the new row, or None when a row with `dedup_key` already exists (queueing the
    same notice twice sends it once). Raises ValueError for an address that is not one
    plain e-mail address, or a subject with a line break.
    """
    to = (to or "").strip()
    if not valid_address(to):
        raise ValueError("not a single e-mail address")
    if "\r" in subject or "\n" in subject:
        raise ValueError("an e-mail subject is one line")
    if dedup_key is not None:
        pending = any(
            isinstance(obj, OutboxEmail) and obj.dedup_key == dedup_key for obj in db.session.new
        )
        if pending or db.session.scalar(
            sa.select(OutboxEmail.id).where(OutboxEmail.dedup_key == dedup_key)
        ):
            return None
    body = render_template(f"mail/{template}.txt", **ctx)
    row = OutboxEmail(
        request_id=request.id if request is not None else None,
        dedup_key=dedup_key,
        event=event,
        to_addr=to,
        subject=subject[:200],
        body=body,
        status=OutboxStatus.PENDING.value,
        attempts=0,
        last_error="",
        next_attempt_at=utcnow(),
        created_at=utcnow(),
    )
    db.session.add(row)
    return row


@sa.event.listens_for(so.Session, "after_flush")
def _remember_new_outbox_rows(session: so.Session, _flush_context: object) -> None:
    ids = [obj.id for obj in session.new if isinstance(obj, OutboxEmail)]
    if ids:
        session.info.setdefault(_INFO_KEY, []).extend(ids)


@sa.event.listens_for(so.Session, "after_rollback")
def _forget_outbox_rows(session: so.Session) -> None:
    session.info.pop(_INFO_KEY, None)


@sa.event.listens_for(so.Session, "after_commit")
def _after_commit(session: so.Session) -> None:
    """Enqueue delivery of the outbox rows this transaction saved (never raises)."""
    ids = session.info.pop(_INFO_KEY, None)
    if not ids:
        return
    if not has_app_context():
        log.warning("outbox rows %s committed outside the app; the next flush sends them", ids)
        return
    for outbox_id in ids:
        try:
            _enqueue(outbox_id)
        except (RedisError, OSError) as exc:
            # One timeout is enough: don't make the page wait for each mail in turn.
            log.warning("mail %s not queued (%s); they stay pending for the next flush",
                        ", ".join(map(str, ids)), type(exc).__name__)
            return


# --- enqueueing (web side, cron) -------------------------------------------------------


def _enqueue(outbox_id: int) -> bool:
    """`enqueue_delivery` without the safety net: Redis errors propagate."""
    from rq.job import JobStatus
    from rq.utils import now as rq_now

    job_id = f"mail-{int(outbox_id)}"
    lane = queue(MAINTENANCE)
    existing = lane.fetch_job(job_id)
    if existing is not None:
        status = existing.get_status(refresh=False)
        since = existing.started_at or existing.enqueued_at or existing.created_at
        active = status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
        if active and since is not None and rq_now() - since < STALE_JOB:
            return False
        existing.delete()
    lane.enqueue(
        deliver,
        args=(int(outbox_id),),
        job_id=job_id,
        job_timeout=120,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        # No rq.Retry: the outbox's own backoff (next_attempt_at + flush) retries, and it
        # survives Redis losing the job.
        description=f"deliver outbox e-mail {int(outbox_id)}",
    )
    return True


def enqueue_delivery(outbox_id: int) -> bool:
    """Put `deliver(outbox_id)` on the maintenance queue as job `mail-<id>`; True if queued.

    Skips a mail whose job is already waiting or running (the job id is the mail's), and
    replaces a finished, failed or long-stuck one. Never raises: with Redis unreachable
    it logs and returns False, and the row waits, pending, for the next flush.
    """
    try:
        return _enqueue(outbox_id)
    except (RedisError, OSError) as exc:
        log.warning("mail %s not queued (%s); it stays pending for the next flush", outbox_id, type(exc).__name__)
        return False


def flush_outbox() -> int:
    """Enqueue delivery of every pending e-mail that is due. Job body, every minute.

    Idempotent: a mail already queued is not queued again, and `deliver` sends a row
    once. Returns how many deliveries it enqueued.
    """
    with job_context():
        ids = list(
            db.session.scalars(
                sa.select(OutboxEmail.id)
                .where(
                    OutboxEmail.status == OutboxStatus.PENDING.value,
                    OutboxEmail.next_attempt_at <= utcnow(),
                )
                .order_by(OutboxEmail.next_attempt_at, OutboxEmail.id)
                .limit(FLUSH_BATCH)
            )
        )
        db.session.rollback()
        queued = sum(1 for outbox_id in ids if enqueue_delivery(outbox_id))
    if ids:
        log.info("%s flush: %s due, %s queued", job_label(), len(ids), queued)
    return queued


# --- delivering (job body) -------------------------------------------------------------


def backoff(attempts: int) -> timedelta:
    """How long to wait after the `attempts`-th failure (1, 2, 5, 10, then 30 minutes)."""
    index = min(max(attempts, 1), len(BACKOFF_MINUTES)) - 1
    return timedelta(minutes=BACKOFF_MINUTES[index])


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _sender(smtp: dict[str, str]) -> str:
    sender = (smtp.get("from") or DEFAULT_FROM).strip()
    return sender if valid_address(sender) else DEFAULT_FROM


def build_message(
    *, to: str, subject: str, body: str, sender: str, message_id: str | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """The MIME message for one mail. Raises ValueError if a header value holds CR/LF."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or utcnow())
    if message_id:
        msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies back
    msg.set_content(body)
    return msg


def _message_for(row: OutboxEmail, sender: str) -> EmailMessage:
    domain = sender.rpartition("@")[2] or "localhost"
    created = row.created_at.strftime("%Y%m%d%H%M%S")
    # Stable per row: a re-sent mail (at-least-once) is recognisably the same message.
    message_id = f"<outbox-{row.id}.{created}@{domain}>"
    return build_message(to=row.to_addr, subject=row.subject, body=row.body, sender=sender,
                         message_id=message_id)


def send_smtp(msg: EmailMessage, *, sender: str, to: str, smtp: dict[str, str]) -> None:
    """Hand one message to the SMTP server (pure logic: no database). Raises on failure."""
    host = smtp["host"]
    starttls = _truthy(smtp.get("starttls"))
    port = int(smtp.get("port") or (587 if starttls else 25))
    with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT) as client:
        client.ehlo()
        if starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if smtp.get("username"):
            client.login(smtp["username"], smtp.get("password", ""))
        client.send_message(msg, from_addr=sender, to_addrs=[to])


def write_eml(msg: EmailMessage, folder: Path, name: str) -> Path:
    """Development: write the message where a developer can open it (atomic rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.eml"
    tmp = folder / f".{name}.eml.tmp"
    tmp.write_bytes(bytes(msg))
    os.replace(tmp, path)
    return path


def _short_error(exc: BaseException, smtp: dict[str, str]) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\r", " ").replace("\n", " ")
    password = smtp.get("password") or ""
    if len(password) >= 4:  # a one-letter "secret" would star out half the message
        text = text.replace(password, "***")
    return text[:300]


def _claim(outbox_id: int) -> bool:
    """Take the row for one send attempt if it is pending and due (commits)."""
    now = utcnow()
    claimed = rowcount(db.session.execute(
        sa.update(OutboxEmail)
        .where(
            OutboxEmail.id == outbox_id,
            OutboxEmail.status == OutboxStatus.PENDING.value,
            OutboxEmail.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + LEASE)
        .execution_options(synchronize_session=False)
    ))
    db.session.commit()
    return bool(claimed)


def permanent_failure(exc: BaseException) -> bool:
    """A failure no retry will change: the SMTP server refused every recipient, or the
    message, with a 5xx reply (RFC 5321 4.2.1), or the message cannot even be built."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(code >= 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPDataError):
        return exc.smtp_code >= 500
    return isinstance(exc, ValueError)  # a header with CR/LF (build_message)


def send_again(row: OutboxEmail, to_addr: str) -> bool:
    """Put a failed mail back in the outbox, to `to_addr` (the desk corrected the address,
    or the server is fixed), and audit it. False, changing nothing, if it was not failed.

    Never commits: the caller commits, then calls `enqueue_delivery(row.id)` (the
    after-commit hook queues only new rows).
    """
    if row.status != OutboxStatus.FAILED.value:
        return False
    old = row.to_addr
    row.to_addr = to_addr
    row.status = OutboxStatus.PENDING.value
    row.attempts = 0
    row.next_attempt_at = utcnow()
    audit.record(audit.Action.MESSAGE, request_id=row.request_id,
                 detail=f"e-mail {row.id} sent again" + (f" to a corrected address (was {old})"
                                                          if old != to_addr else ""))
    return True


def deliver(outbox_id: int) -> str:
    """Send one outbox e-mail. Job body.

    Idempotent: a row already sent, not yet due, or claimed by another worker is left
    alone. On failure the row records the attempt and stays pending, then the job raises
    `DeliveryFailed` so RQ shows the failure too; `flush_outbox` retries after backoff. A
    permanent refusal, or the MAX_ATTEMPTS-th failure, marks the row failed instead: the
    desk lists it (/desk/mail) to be corrected and sent again.
    """
    with job_context() as app:
        settings = app.config["IEP_SETTINGS"]
        smtp: dict[str, str] = dict(settings.smtp or {})
        if not _claim(outbox_id):
            status = db.session.scalar(sa.select(OutboxEmail.status).where(OutboxEmail.id == outbox_id))
            log.info("%s mail %s: nothing to do (%s)", job_label(), outbox_id, status or "no such row")
            return status or "missing"
        row = db.session.get(OutboxEmail, outbox_id)
        assert row is not None  # noqa: S101 - narrows the type; an invariant, not a check
        call_ref = ""
        if row.request_id is not None:
            call_ref = db.session.scalar(sa.select(Request.call_ref).where(Request.id == row.request_id)) or ""
        sender, to_addr, eml_name = _sender(smtp), row.to_addr, f"{row.id:08d}-{call_ref or 'mail'}"
        try:
            msg = _message_for(row, sender)
        except ValueError as exc:
            msg, bad_header = None, exc
        # No transaction stays open while the SMTP server takes its time (the row is
        # re-read after the send; it is ours until the lease ends).
        db.session.commit()
        try:
            if msg is None:
                raise bad_header
            if smtp.get("host"):
                send_smtp(msg, sender=sender, to=to_addr, smtp=smtp)
                how = "sent by SMTP"
            elif settings.production:
                # A production desk without SMTP_HOST must not "send" into a folder.
                raise DeliveryFailed("SMTP_HOST is not set")
            else:
                write_eml(msg, Path(settings.instance_path) / "mail", eml_name)
                how = "written to instance/mail"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, then re-raised
            row.attempts += 1
            row.last_error = _short_error(exc, smtp)
            row.next_attempt_at = utcnow() + backoff(row.attempts)
            attempts, error = row.attempts, row.last_error
            if permanent_failure(exc) or attempts >= MAX_ATTEMPTS:
                row.status = OutboxStatus.FAILED.value
                db.session.commit()
                log.error("%s mail %s for %s not delivered, given up after attempt %s: %s", job_label(), outbox_id,
                          call_ref or "-", attempts, error)
                return OutboxStatus.FAILED.value
            db.session.commit()
            log.warning("%s mail %s for %s failed (attempt %s): %s", job_label(), outbox_id, call_ref or "-",
                        attempts, error)
            raise DeliveryFailed(f"mail {outbox_id} not sent (attempt {attempts}): {error}") from exc
        row.status = OutboxStatus.SENT.value
        row.sent_at = utcnow()
        row.last_error = ""
        row.attempts += 1
        _after_sent(row, call_ref)
        db.session.commit()
        log.info("%s mail %s for %s %s", job_label(), outbox_id, call_ref or "-", how)
        return OutboxStatus.SENT.value


def _after_sent(row: OutboxEmail, call_ref: str) -> None:
    """What a sent notice moves on (`notices.on_sent`: the Delivered notice completes its
    request), in the transaction that records the send, so both are saved or neither.

    In a savepoint: whatever goes wrong there is logged and undone, and the send is still
    recorded (the mail has gone; sending it again would not mend anything)."""
    from app.workflow import notices  # notices imports this module

    try:
        with db.session.begin_nested():
            notices.on_sent(row)
    except Exception as exc:  # noqa: BLE001 - the send must be recorded whatever this does
        log.error("%s mail %s for %s sent, but what it completes was not done: %s", job_label(), row.id,
                  call_ref or "-", type(exc).__name__)
