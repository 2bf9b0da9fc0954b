"""The admin's PAS extract upload (issue 14.3): receive a file, check it in a job (the
preview), apply it in a job, on Apply, exactly as previewed.

Both steps run on the worker pool's `maintenance` queue, never in a web request: at
100,000 rows the check alone takes several seconds on SQLite (measured 2.5-9 s on the
shared test machine, and as long again to write). The rules are `pas.py`'s, the same
`pas import` follows: bad lines are named and left out, the good ones load.

An upload's bytes are kept in its `pas_extracts` row until it is applied or replaced. Apply
names the upload's token, which must be the one in the uploader's own session; the bytes
must still hash to what was previewed; and the apply job checks the file again against the
register and applies only when every line would do what the preview said (the same plan),
else it shows the new preview instead.

Jobs take ids and are idempotent: the row's state says what is left to do, and an apply
writes the patients and its APPLIED state in one commit. Nothing here logs a value from
the file; the audit's details hold counts and ids only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import sqlalchemy as sa
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from app import audit
from app.extensions import db, rowcount
from app.logs import log_exception
from app.patients.models import PasExtract
from app.patients.pas import ExtractCheck, apply_extract, check_extract, screen_extract
from app.queues import MAINTENANCE, job_context, queue
from app.timeutil import local_today, utcnow

log = logging.getLogger("iep.pas")

MAX_EXTRACT_BYTES = 16 * 1024**2  # about 150,000 rows; the site takes no request past 20 MiB
MAX_LISTED = 500  # bad lines kept for the preview; the count says how many more
KEEP_UNAPPLIED = timedelta(days=1)  # an upload not applied by then loses its bytes
PROGRESS_EVERY = 1.0  # seconds between two progress writes
JOB_TIMEOUT = 1800

QUEUE_DOWN = ("The worker pool's queue cannot be reached, so the file cannot be checked now. Nothing was "
              "applied; upload it again later, and tell the service desk if this goes on.")
FAILED = ("The job failed unexpectedly. Nothing was applied; upload the file again, and tell the service desk "
          "if it happens again.")
REGISTER_CHANGED = ("The register changed since the preview (another extract was applied, or a patient was "
                    "changed), so some lines would now do something else. Nothing was applied: check the new "
                    "preview below, then apply again.")
CLASHED = ("The register changed while the extract was being applied. Nothing was applied; upload the file "
           "again.")


class ExtractRefused(Exception):
    """The upload or the Apply is refused; `message` says why, `status` is the HTTP one."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Preview:
    """What the page shows of a checked extract beyond its counts."""

    bad_lines: list[tuple[int, str, str]]  # (line, column, problem), the first MAX_LISTED
    not_listed: int  # bad lines beyond those
    not_in_file: int  # registered patients the file leaves as they are


def preview_of(extract: PasExtract) -> Preview:
    data: dict[str, Any] = json.loads(extract.preview_json) if extract.preview_json else {}
    return Preview(bad_lines=[(int(line), str(column), str(problem)) for line, column, problem in
                              data.get("bad_lines", [])],
                   not_listed=int(data.get("not_listed", 0)), not_in_file=int(data.get("not_in_file", 0)))


def last_applied() -> PasExtract | None:
    """The extract applied last (by the page or `pas import`), or None."""
    return db.session.scalar(sa.select(PasExtract).where(PasExtract.state == PasExtract.APPLIED)
                             .order_by(PasExtract.applied_at.desc(), PasExtract.id.desc()).limit(1))


def current(token: object, user_id: int) -> PasExtract | None:
    """The upload `token` names when it is `user_id`'s; None otherwise."""
    if not isinstance(token, str) or not token or len(token) > 64:
        return None
    extract = db.session.scalar(sa.select(PasExtract).where(PasExtract.token == token))
    return extract if extract is not None and extract.uploaded_by_id == user_id else None


# --- the web side ------------------------------------------------------------------------------


def receive(data: bytes, file_name: str, user_id: int, actor: str) -> PasExtract:
    """Keep an uploaded extract and queue its check; raises ExtractRefused (audited) for a
    file refused as a whole: empty, too big, not UTF-8, not CSV, the wrong columns."""
    if not data:
        _refuse("empty", "The file is empty: choose the PAS extract (a CSV file).")
    if len(data) > MAX_EXTRACT_BYTES:
        _refuse("too big", f"The file is larger than {MAX_EXTRACT_BYTES // 1024**2} MB: an extract this size "
                           "cannot be taken here; split it, or load it with `flask --app wsgi pas import`.")
    message, kind = screen_extract(data)
    if message:
        _refuse(kind, message)
    now = utcnow()
    db.session.execute(sa.update(PasExtract).where(
        PasExtract.state.in_((PasExtract.CHECKING, PasExtract.PREVIEWED)),
        sa.or_(PasExtract.uploaded_by_id == user_id, PasExtract.uploaded_at < now - KEEP_UNAPPLIED),
    ).values(state=PasExtract.REPLACED, content=None, preview_json=""))
    extract = PasExtract(token=secrets.token_urlsafe(32), state=PasExtract.CHECKING, file_name=_name(file_name),
                         size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), content=data,
                         uploaded_by_id=user_id, actor=actor[:254], uploaded_at=now, total=data.count(b"\n") or 1)
    db.session.add(extract)
    db.session.flush()
    audit.record(audit.Action.PAS_PREVIEW, user_id=user_id,
                 detail=f"extract {extract.id} uploaded for a preview: {len(data)} bytes")
    db.session.commit()
    if not _enqueue(check_job, extract.id):
        _fail(extract.id, QUEUE_DOWN)
        db.session.refresh(extract)
    return extract


def request_apply(token: object, session_token: object, user_id: int, confirmed: bool) -> PasExtract:
    """Queue the apply of the preview `token` names: it must be this session's upload, still
    previewed, with its bytes as previewed. Raises ExtractRefused (a refusal is audited)."""
    extract = current(token, user_id)
    if extract is None or not secrets.compare_digest(str(token).encode(), str(session_token or "").encode()):
        _refuse("not this session's", "This preview is not one you uploaded in this session, or it no longer "
                                      "exists: upload the file again.", 409)
    if extract.state != PasExtract.PREVIEWED:
        said = {PasExtract.APPLIED: "it has already been applied", PasExtract.APPLYING: "it is being applied",
                PasExtract.CHECKING: "it is still being checked"}.get(extract.state, "a newer upload replaced it")
        _refuse("stale", f"This preview cannot be applied: {said}.", 409, extract.id)
    if extract.content is None or hashlib.sha256(extract.content).hexdigest() != extract.sha256:
        _refuse("changed", "The file kept for this preview has changed since it was checked: upload it again.",
                409, extract.id)
    if not confirmed:
        raise ExtractRefused("Tick the box to confirm that the register is to change as the preview says.")
    claimed = rowcount(db.session.execute(sa.update(PasExtract).where(
        PasExtract.id == extract.id, PasExtract.state == PasExtract.PREVIEWED,
    ).values(state=PasExtract.APPLYING, done=0, message="")))
    db.session.commit()
    if not claimed:  # a second click that lost the race to the first
        _refuse("stale", "This preview cannot be applied: it is being applied.", 409, extract.id)
    if not _enqueue(apply_job, extract.id):
        db.session.execute(sa.update(PasExtract).where(PasExtract.id == extract.id).values(
            state=PasExtract.PREVIEWED, message=QUEUE_DOWN))
        db.session.commit()
    db.session.refresh(extract)
    return extract


def _refuse(kind: str, message: str, status: int = 422, extract_id: int | None = None) -> NoReturn:
    """Audit the refusal (its kind and the extract's id, never the file's values) and raise."""
    db.session.rollback()
    which = f"extract {extract_id}: " if extract_id else ""
    audit.record(audit.Action.PAS_REFUSED, detail=f"{which}{kind}")
    db.session.commit()
    raise ExtractRefused(message, status)


def _name(file_name: str) -> str:
    name = "".join(ch if ch.isprintable() else "?" for ch in (file_name or "").replace("\\", "/").split("/")[-1])
    return name[:255] or "extract.csv"


def _enqueue(job: Any, extract_id: int) -> bool:
    try:
        queue(MAINTENANCE).enqueue(job, extract_id, job_id=f"pas-{job.__name__}-{extract_id}",
                                   job_timeout=JOB_TIMEOUT, result_ttl=600, failure_ttl=86400)
    except RedisError as exc:
        log.warning("PAS extract %s: job not queued (%s)", extract_id, type(exc).__name__)
        return False
    return True


# --- the jobs ----------------------------------------------------------------------------------


def check_job(extract_id: int) -> str:
    """Check extract `extract_id` against the register: the preview. Idempotent: only an
    extract still CHECKING is checked; the result replaces the preview in one commit."""
    with job_context():
        extract = db.session.get(PasExtract, extract_id)
        if extract is None or extract.state != PasExtract.CHECKING or extract.content is None:
            return "nothing to check"
        try:
            check = check_extract(extract.content, local_today(), _progress(extract_id, PasExtract.CHECKING))
            extract = db.session.get_one(PasExtract, extract_id)
            if extract.state != PasExtract.CHECKING:
                return "replaced while checked"
            _keep_preview(extract, check)
            extract.state = PasExtract.FAILED if check.fatal else PasExtract.PREVIEWED
            extract.message = check.fatal
            if check.fatal:
                extract.content = None
            audit.record(audit.Action.PAS_PREVIEW, user_id=extract.uploaded_by_id,
                         detail=f"extract {extract_id} previewed: {_figures(check)}")
            db.session.commit()
        except Exception:
            _failed(extract_id, "check")
            raise
        return "checked"


def apply_job(extract_id: int) -> str:
    """Apply extract `extract_id` as previewed. Idempotent: only an extract still APPLYING
    is applied, and its patients and its APPLIED state are written in one commit. When a
    line would now do something other than the preview said, nothing is written and the new
    preview is shown instead."""
    with job_context():
        extract = db.session.get(PasExtract, extract_id)
        if extract is None or extract.state != PasExtract.APPLYING or extract.content is None:
            return "nothing to apply"
        try:
            check = check_extract(extract.content, local_today(), _progress(extract_id, PasExtract.APPLYING))
            extract = db.session.get_one(PasExtract, extract_id)
            if check.fatal or check.plan != extract.plan:
                _keep_preview(extract, check)
                extract.state, extract.message = PasExtract.PREVIEWED, REGISTER_CHANGED
                audit.record(audit.Action.PAS_REFUSED, user_id=extract.uploaded_by_id,
                             detail=f"extract {extract_id}: the register changed since the preview")
                db.session.commit()
                return "register changed"
            apply_extract(check)
            extract.state, extract.applied_at, extract.content = PasExtract.APPLIED, utcnow(), None
            extract.done = extract.total
            audit.record(audit.Action.PAS_IMPORT, user_id=extract.uploaded_by_id,
                         detail=f"extract {extract_id}: {check.counts}")
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            _fail(extract_id, CLASHED)
            return "register changed while applying"
        except Exception:
            _failed(extract_id, "apply")
            raise
        return "applied"


def _figures(check: ExtractCheck) -> str:
    return f"{check.rows} rows; {check.counts}; {check.not_in_file} registered patients not in the file"


def _keep_preview(extract: PasExtract, check: ExtractCheck) -> None:
    extract.rows = check.rows
    extract.plan = check.plan
    extract.added, extract.updated = len(check.added), len(check.updated)
    extract.unchanged, extract.rejected = check.unchanged, check.rejected
    extract.done = extract.total
    extract.preview_json = json.dumps({
        "bad_lines": [[bad.line, bad.column, bad.message] for bad in check.errors[:MAX_LISTED]],
        "not_listed": max(0, check.rejected - MAX_LISTED),
        "not_in_file": check.not_in_file,
    })


def _progress(extract_id: int, state: str):  # noqa: ANN202 - a pas.Progress
    """Write the lines read so far, at most once a second, while the row is in `state`.
    The check only reads the register, so these commits carry nothing else."""
    last = [0.0]

    def beat(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY and done < total:
            return
        last[0] = now
        db.session.execute(sa.update(PasExtract).where(PasExtract.id == extract_id, PasExtract.state == state)
                           .values(done=min(done, total), total=total))
        db.session.commit()

    return beat


def _fail(extract_id: int, message: str) -> None:
    db.session.execute(sa.update(PasExtract).where(PasExtract.id == extract_id).values(
        state=PasExtract.FAILED, message=message, content=None))
    db.session.commit()


def _failed(extract_id: int, step: str) -> None:
    """A job's unexpected error: logged without its message (it may quote the file), the
    row marked FAILED; the caller re-raises so RQ records the failure."""
    db.session.rollback()
    log_exception(log, "PAS extract %s: the %s job failed", extract_id, step)
    try:
        _fail(extract_id, FAILED)
    except Exception:
        db.session.rollback()
        log_exception(log, "PAS extract %s: could not mark it failed", extract_id)
