"""Receiving a CD's files from the browser (issue 12.1): the manifest, then the bytes.

The browser first announces what it will send (a manifest: each file's path on the CD
and its size); the desk checks it (it is hostile: counts, sizes, names), makes an upload
row and a file row per file, and answers with the files' ids. The bytes then arrive file
by file in chunks of at most 8 MiB, each at the offset the database says that file has
reached. A dropped connection or a closed tab resumes there: the same manifest finds the
same upload, and the browser skips what the database says has arrived.

A chunk is read from the request's stream in 64 KiB pieces into a spool file first, then
*claimed* with a conditional UPDATE (`received = offset`): only the claim's winner writes
into the stored file, at that offset, before its commit. Two chunks for one file at once
cannot both append; bytes on disk past `received` (a write whose commit failed) are never
trusted, since the next write truncates there.

No Flask request objects here (the routes pass a stream and its length). A path from the
browser is text: it is stored and shown (escaped), never used as a file-system path;
bytes are stored by row id (`storage.file_path`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import sqlalchemy as sa

from app import audit
from app.auth.models import User
from app.cds import storage
from app.cds.jobs import queue_scan
from app.cds.models import CdFile, CdUpload, CdUploadState
from app.extensions import db
from app.requests.models import Request
from app.requests.statuses import Kind, Status
from app.timeutil import utcnow

MAX_FILES = 20_000
MAX_FILE_BYTES = 1024**3  # 1 GiB: larger than any file of a CD (700 MB)
MAX_TOTAL_BYTES = 2 * 1024**3  # a DVD's worth; a CD holds 700 MB
MAX_PATH_CHARS = 500  # CdFile.relpath
MAX_CHUNK_BYTES = 8 * 1024**2
COPY_PIECE = 64 * 1024  # what is read from the request (and copied) at a time
KINDS = ("folder", "files", "zip")
MAX_LISTED_ERRORS = 20  # of a hostile manifest's problems, the first ones are named

# A request past these takes no CD upload: its images are on their way or it is closed.
CLOSED_STATUSES = frozenset({
    Status.DOWNLOAD_REQUEST, Status.DOWNLOADING, Status.DELIVERED, Status.COMPLETED,
    Status.CANCELLED, Status.DECLINED, Status.PURGED,
})
# An upload in one of these states is replaced by a new, different manifest.
REPLACEABLE = frozenset({CdUploadState.UPLOADING, CdUploadState.SCANNING, CdUploadState.SCANNED,
                         CdUploadState.FAILED})
SENT_OR_SENDING = frozenset({CdUploadState.SENDING, CdUploadState.SENT})
REPLACED = "replaced by a new upload"
QUEUE_DOWN = "All files received; the scan starts when the queue is back."
QUEUED = "All files received; the scan has started."


class ManifestInvalid(Exception):
    """The manifest is refused; `errors` names each problem (field -> messages). Nothing saved."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(m for ms in errors.values() for m in ms))
        self.errors = errors


class UploadRefused(Exception):
    """This request takes no (new) upload now; the message says why. `status` is the HTTP one."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ChunkRefused(Exception):
    """A chunk not taken: `status` (400, 409, 411, 413), the message, and the file's received
    count as the database has it (the browser re-syncs to it)."""

    def __init__(self, status: int, message: str, received: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.received = received


@dataclass(frozen=True)
class Entry:
    path: str
    size: int


@dataclass(frozen=True)
class Started:
    upload: CdUpload
    resumed: bool


@dataclass(frozen=True)
class ChunkResult:
    received: int  # the file's bytes so far
    complete: bool  # every file of the upload has all its bytes: the upload is SCANNING
    queued: bool | None = None  # on completion: whether the scan job was queued
    message: str = ""


# --- the manifest ---------------------------------------------------------------------------


def _shown(path: str) -> str:
    """A path as an error message quotes it: short, and without control characters."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in path[:80])
    return clean + ("…" if len(path) > 80 else "")


def parse_manifest(raw: object, kind: object = None) -> tuple[list[Entry], str]:
    """The files the browser announces, checked; raises ManifestInvalid naming every problem."""
    errors: dict[str, list[str]] = {}
    if kind is None or kind == "":
        kind = "files"
    if not isinstance(kind, str) or kind not in KINDS:
        errors["kind"] = ["The kind of upload must be folder, files or zip."]
        kind = "files"
    if not isinstance(raw, list):
        raise ManifestInvalid({**errors, "files": ["The list of files is missing: choose a folder, files or a .zip."]})
    if not raw:
        raise ManifestInvalid({**errors, "files": ["No files were chosen: choose a folder, files or a .zip."]})
    if len(raw) > MAX_FILES:
        raise ManifestInvalid({**errors, "files": [
            f"A CD upload may hold at most {MAX_FILES:,} files; this one has {len(raw):,}."]})
    problems: list[str] = []
    entries: list[Entry] = []
    seen: set[str] = set()
    total = 0
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or set(item) - {"path", "size"}:
            problems.append(f"File {number}: expected a path and a size.")
            continue
        path, size = item.get("path"), item.get("size")
        if not isinstance(path, str) or not path.strip():
            problems.append(f"File {number}: its name is missing.")
            continue
        if len(path) > MAX_PATH_CHARS:
            problems.append(f"File {number}: its name is longer than {MAX_PATH_CHARS} characters.")
            continue
        if "\x00" in path:
            # No file system names a file with a NUL (and PostgreSQL stores no NUL in text):
            # the manifest was made by hand. Other control characters are kept, for the scan.
            problems.append(f"File {number}: its name holds a NUL character, which no file name can.")
            continue
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"File {number}: its name is not valid text.")
            continue
        if type(size) is not int or size < 0:  # a JSON true is not 1; 1.5 is not a size
            problems.append(f"File {number} ({_shown(path)}): its size is not a whole number of bytes.")
            continue
        if size > MAX_FILE_BYTES:
            problems.append(f"File {number} ({_shown(path)}) is larger than 1 GB; no file of a CD is.")
            continue
        if path in seen:
            problems.append(f"File {number} ({_shown(path)}) is listed twice.")
            continue
        seen.add(path)
        total += size
        entries.append(Entry(path, size))
    if not problems and total > MAX_TOTAL_BYTES:
        problems.append(f"The files add up to {total / 1024**3:.1f} GB; a CD upload may be at most 2 GB.")
    if kind == "zip" and len(raw) != 1:
        problems.append("A .zip is uploaded on its own: choose one .zip file.")
    if problems:
        shown = problems[:MAX_LISTED_ERRORS]
        if len(problems) > MAX_LISTED_ERRORS:
            shown.append(f"…and {len(problems) - MAX_LISTED_ERRORS:,} more problems.")
        errors["files"] = shown
    if errors:
        raise ManifestInvalid(errors)
    return entries, kind


# --- starting, resuming, replacing ----------------------------------------------------------


def latest_upload(req: Request) -> CdUpload | None:
    """The request's newest upload that is not purged (the one its page shows)."""
    return db.session.scalar(
        sa.select(CdUpload).where(CdUpload.request_id == req.id, CdUpload.state != CdUploadState.PURGED)
        .order_by(CdUpload.id.desc()).limit(1))


def check_open(req: Request) -> None:
    """Raise UploadRefused unless `req` takes a CD upload now."""
    if req.kind != Kind.CD:
        raise UploadRefused("Only a CD import request takes a CD upload.", status=400)
    if req.status in CLOSED_STATUSES:
        raise UploadRefused(f"This request is {req.status.value}: it takes no CD upload now.")


def can_upload(req: Request) -> bool:
    """Whether the page offers an upload: a CD request still open, nothing sent from it."""
    try:
        check_open(req)
    except UploadRefused:
        return False
    return not db.session.scalar(sa.select(sa.exists().where(
        CdUpload.request_id == req.id, CdUpload.state.in_(SENT_OR_SENDING))))


def _manifest_of(upload: CdUpload) -> set[tuple[str, int]]:
    rows = db.session.execute(sa.select(CdFile.relpath, CdFile.size).where(CdFile.upload_id == upload.id))
    return {(path, size) for path, size in rows}


def start_upload(req: Request, user: User, manifest: object, kind: object = None) -> Started:
    """Begin (or resume) the CD upload of `req` for the files in `manifest` and commit.

    The same files (path and size) as the request's unfinished upload: that upload, to be
    resumed. Different files: a new upload, replacing an unfinished or scanned-but-unsent
    one (purged: its files deleted). Raises ManifestInvalid or UploadRefused, saving nothing."""
    entries, kind_ = parse_manifest(manifest, kind)
    check_open(req)
    # One start at a time per request (PostgreSQL; SQLite has one writer anyway): two tabs
    # announcing the same folder at once must not make two uploads.
    db.session.execute(sa.select(Request.id).where(Request.id == req.id).with_for_update())
    earlier = db.session.scalars(
        sa.select(CdUpload).where(CdUpload.request_id == req.id, CdUpload.state != CdUploadState.PURGED)
        .order_by(CdUpload.id)).all()
    if any(u.state in SENT_OR_SENDING for u in earlier):
        db.session.rollback()
        raise UploadRefused("This CD's images have been sent to PACS (or are being sent): "
                            "a new upload cannot replace them.")
    wanted = {(e.path, e.size) for e in entries}
    for upload in earlier:
        if upload.state == CdUploadState.UPLOADING and _manifest_of(upload) == wanted:
            db.session.commit()  # releases the lock; nothing changed
            return Started(upload, resumed=True)
    replaced = [u for u in earlier if u.state in REPLACEABLE]
    now = utcnow()
    for old in replaced:
        old.state = CdUploadState.PURGED
        old.purged_at = now
        old.purge_reason = REPLACED
        old.updated_at = now
    total = sum(e.size for e in entries)
    upload = CdUpload(request_id=req.id, created_by_id=user.id, created_at=now, updated_at=now,
                      state=CdUploadState.UPLOADING, files_expected=len(entries), bytes_expected=total,
                      bytes_received=0)
    db.session.add(upload)
    db.session.flush()
    db.session.execute(sa.insert(CdFile), [
        {"upload_id": upload.id, "relpath": e.path, "size": e.size, "received": 0, "refused": ""}
        for e in entries])
    # Counts and ids only: a CD's file names may hold a patient's name.
    audit.record(audit.Action.CD_UPLOAD, request_id=req.id,
                 detail=f"{req.call_ref} upload {upload.id} started ({kind_}): {len(entries)} files, {total} bytes"
                 + (f"; replaces upload {', '.join(str(u.id) for u in replaced)}" if replaced else ""),
                 user_id=user.id)
    # Empty files only: nothing to wait for (_finish commits when it starts the scan).
    if _finish(upload, user_id=user.id) is None:
        db.session.commit()
    for old in replaced:
        storage.remove(old.id)  # after the commit: a rolled-back replacement keeps its files
    return Started(upload, resumed=False)


def files_of(upload: CdUpload) -> Sequence[CdFile]:
    return db.session.scalars(sa.select(CdFile).where(CdFile.upload_id == upload.id).order_by(CdFile.id)).all()


@dataclass(frozen=True)
class Progress:
    files_done: int
    files_expected: int
    bytes_received: int
    bytes_expected: int
    uploading: bool

    @property
    def mb_received(self) -> float:
        return self.bytes_received / 1024**2

    @property
    def mb_expected(self) -> float:
        return self.bytes_expected / 1024**2


def progress_of(upload: CdUpload) -> Progress:
    """How far the upload is, from the database (one count query)."""
    done = db.session.scalar(sa.select(sa.func.count()).select_from(CdFile).where(
        CdFile.upload_id == upload.id, sa.or_(CdFile.refused != "", CdFile.received >= CdFile.size)))
    return Progress(files_done=done or 0, files_expected=upload.files_expected,
                    bytes_received=upload.bytes_received, bytes_expected=upload.bytes_expected,
                    uploading=upload.state == CdUploadState.UPLOADING)


def describe(upload: CdUpload, *, with_files: bool = True) -> dict[str, Any]:
    """The upload as JSON for the browser: state, counts, and each file's id and bytes so far."""
    progress = progress_of(upload)
    body: dict[str, Any] = {
        "upload_id": upload.id,
        "state": upload.state.value,
        "files_expected": progress.files_expected,
        "files_done": progress.files_done,
        "bytes_expected": progress.bytes_expected,
        "bytes_received": progress.bytes_received,
    }
    if with_files:
        body["files"] = [{"id": f.id, "path": f.relpath, "size": f.size, "received": f.received}
                         for f in files_of(upload)]
    return body


# --- the bytes ------------------------------------------------------------------------------


def _spool(upload_id: int, file_id: int, stream: IO[bytes], length: int) -> str:
    """Copy `length` bytes of `stream` to a spool file, 64 KiB at a time; its path. Raises
    ChunkRefused(400) when the stream ends early (a dropped connection)."""
    folder = storage.upload_dir(upload_id) / "incoming"
    folder.mkdir(parents=True, exist_ok=True)
    spool = folder / f"{int(file_id)}-{uuid.uuid4().hex}.part"
    left = length
    try:
        with open(spool, "wb") as out:
            while left > 0:
                piece = stream.read(min(COPY_PIECE, left))
                if not piece:
                    raise ChunkRefused(400, "The chunk arrived incomplete; send it again.")
                out.write(piece)
                left -= len(piece)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(spool)
        raise
    return str(spool)


def _write_at(upload_id: int, file_id: int, offset: int, spool: str) -> None:
    """Put the spooled chunk into the stored file at `offset` (what lies past it is cut off)."""
    target = storage.file_path(upload_id, file_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as out, open(spool, "rb") as src:
        out.truncate(offset)
        out.seek(offset)
        shutil.copyfileobj(src, out, COPY_PIECE)
        out.flush()
        os.fsync(out.fileno())


def _current(file_id: int) -> int:
    return db.session.scalar(sa.select(CdFile.received).where(CdFile.id == file_id)) or 0


def receive_chunk(upload: CdUpload, file: CdFile, offset: int, stream: IO[bytes], length: int | None,
                  *, user_id: int | None = None) -> ChunkResult:
    """Append `length` bytes of `stream` to `file` at `offset` and commit; on the upload's
    last byte, start its scan (audited as `user_id`'s; by default whoever started the upload).
    Raises ChunkRefused (nothing changed) when the chunk is too large, past the announced
    size, not at the file's received count (409 with the count), or the upload no longer
    receives files."""
    if file.upload_id != upload.id:
        raise ChunkRefused(404, "No such file in this upload.")
    if length is None:
        raise ChunkRefused(411, "A chunk must say its length (Content-Length).")
    if length > MAX_CHUNK_BYTES:
        raise ChunkRefused(413, f"A chunk may be at most {MAX_CHUNK_BYTES // 1024**2} MiB.", file.received)
    if upload.state != CdUploadState.UPLOADING:
        raise ChunkRefused(409, "This upload is not receiving files any more.", file.received)
    if file.refused:
        raise ChunkRefused(409, "The desk does not take this file.", file.received)
    if offset != file.received:
        raise ChunkRefused(409, f"This file has {file.received} bytes already: send from there.", file.received)
    if offset + length > file.size:
        raise ChunkRefused(400, f"This chunk goes past the file's announced size ({file.size} bytes).", file.received)
    if length == 0:
        return ChunkResult(received=file.received, complete=False)
    upload_id, file_id, file_done = upload.id, file.id, offset + length == file.size
    user_id = user_id if user_id is not None else upload.created_by_id
    db.session.commit()  # no transaction left open while the body arrives
    spool = _spool(upload_id, file_id, stream, length)
    try:
        # The upload row first (every chunk of one upload takes the locks in this order),
        # only while it still receives files; then the claim on this file's offset.
        busy = db.session.execute(
            sa.update(CdUpload).where(CdUpload.id == upload_id, CdUpload.state == CdUploadState.UPLOADING)
            .values(bytes_received=CdUpload.bytes_received + length, updated_at=utcnow()))
        if busy.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
            db.session.rollback()
            raise ChunkRefused(409, "This upload is not receiving files any more.", _current(file_id))
        claim = db.session.execute(
            sa.update(CdFile).where(CdFile.id == file_id, CdFile.received == offset)
            .values(received=offset + length))
        if claim.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
            db.session.rollback()
            received = _current(file_id)
            raise ChunkRefused(409, f"This file has {received} bytes already: send from there.", received)
        try:
            _write_at(upload_id, file_id, offset, spool)
        except OSError:
            db.session.rollback()
            raise
        # Only a chunk that ends its file can end the upload: the others skip the count.
        result = _finish(upload, received=offset + length, user_id=user_id) if file_done else None
        if result is None:
            db.session.commit()
            return ChunkResult(received=offset + length, complete=False)
        return result
    finally:
        with contextlib.suppress(OSError):
            os.unlink(spool)


def _finish(upload: CdUpload, received: int = 0, user_id: int | None = None) -> ChunkResult | None:
    """If every file of `upload` has all its bytes: SCANNING, committed, audited, scan queued.
    None (nothing committed) while files are missing. Runs inside the chunk's transaction,
    after its UPDATE of the upload row, so two last chunks at once cannot both miss it."""
    missing = db.session.scalar(sa.select(sa.func.count()).select_from(CdFile).where(
        CdFile.upload_id == upload.id, CdFile.refused == "", CdFile.received < CdFile.size))
    if missing:
        return None
    now = utcnow()
    won = db.session.execute(
        sa.update(CdUpload).where(CdUpload.id == upload.id, CdUpload.state == CdUploadState.UPLOADING)
        .values(state=CdUploadState.SCANNING, completed_at=now, updated_at=now))
    if won.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for an UPDATE
        db.session.commit()
        return ChunkResult(received=received, complete=True)
    db.session.expire(upload)
    audit.record(audit.Action.CD_UPLOAD, request_id=upload.request_id,
                 detail=f"upload {upload.id} complete: {upload.files_expected} files, "
                        f"{upload.bytes_expected} bytes", user_id=user_id)
    db.session.commit()
    queued = queue_scan(upload)
    return ChunkResult(received=received, complete=True, queued=queued, message=QUEUED if queued else QUEUE_DOWN)
