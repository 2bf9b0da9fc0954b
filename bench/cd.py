"""Uploading and scanning a 1,000-instance CD through the desk, against `cp -r` of the same files.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/cd.py [--instances 1000] [--small 200] [--tmp-dir /tmp] [--keep]

Issue 12's benchmark line: upload and scan of a 1,000-instance CD, seconds and MB/s,
against copying the same files with `cp` on the same disk, and the worker's peak memory
at 200 and 1,000 instances (flat).

1. **Two CDs, generated once** in a temporary folder on the disk everything else uses:
   --instances and --small CT instances of 512 x 512 x 16 bit (about 0.5 MB each, one
   patient, one study, 4 series), written by pydicom's FileSet as a media creator writes
   them (`CD/DICOMDIR`, `CD/PT000000/ST000000/SE000000/IM000000`, ...).
2. **A scratch desk**: SQLite file migrated with `flask_migrate.upgrade()`, an embedded
   Redis, IEP_DATA_DIR in the folder; one requester and the PAS row of the CD's patient.
   Then the desk as `make run` serves it: `flask --app wsgi run` (Werkzeug's threaded
   server) in a process of its own, and the real pool, `python worker.py` with
   IEP_WORKERS="inbound=1", no cron, no gateway.
3. **Per CD, the baseline first**: `sync`, then `cp -r` of the CD folder to another
   folder of the same disk, timed; then `sync` again, timed (the copy made durable, for
   reference); the copy is deleted. For reference too, the desk's write pattern without
   HTTP or database: each file copied by Python and fsynced.
4. **Then the desk, over HTTP as cd_upload.js does it**, from one client that keeps its
   connection alive when the server lets it (http.client; the TCP connections opened and
   the answers saying `Connection: close` are counted: Werkzeug's server closes every
   connection, so each request opens one): sign in through /login, submit the CD form
   (/requests/new/cd), `sync`, then the manifest (POST .../cd-upload, JSON) and each file
   in turn in PUTs of at most 8 MiB at the offset the desk answered, X-CSRFToken on each.
   Timed: the manifest, the PUTs (each one's latency kept), and from the last PUT's answer
   to the upload's row saying `scanned` (the database is polled). While the scan runs,
   the pool's work-horse tree is sampled for RSS (psutil, every 5 ms; the kernel's VmHWM
   every 50 ms), as bench/transfer.py does. For the large CD, before its bytes, as many
   empty PUTs as it has files (offset 0, no body: the route, sign-in, CSRF and lookups,
   no bytes and no write) measure the per-request cost of the HTTP server and the app.
5. **`receive_chunk` in process** (no HTTP) on a fresh upload of each CD, every file but
   the last (nothing completes, no scan is queued), its spool, write, fsync, `_finish`
   and commits timed by wrappers: where a chunk's time goes on the server.
6. **Checked**, or the bench fails: every PUT answered 200 with the expected count, the
   last one `complete` and the scan queued; the upload's JSON status says every file and
   byte received; every stored file equals its source byte for byte; the scan's result
   (`CdUpload.scan_json`, `ScanResult.from_json`) used the DICOMDIR and holds one patient,
   one study, exactly --instances instances and no problems.

Report: seconds, MB/s (10^6 bytes) and files/s for cp, the upload, the scan and the two
together, each as a ratio to cp's time; the per-PUT latencies; the scanning work-horse's
peak RSS at both sizes, with the bar: the peak at --instances within 10 % of that at
--small (exit status 1 if not). The server, the pool and Redis are stopped by pid (also on
failure or Ctrl+C) and the folder deleted unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import date
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's
from bench.support import free_port, tail, vm_hwm  # noqa: E402 - after the repository is on sys.path

MB = 1_000_000
RSS_SAMPLE_SECONDS = 0.005
RSS_LOOK_SECONDS = 0.05
BAR_RSS_GROWTH = 0.10
SCAN_TIMEOUT = 600  # seconds from the last PUT to `scanned` before the bench gives up
EMAIL = "requester@bench.uhl"
PASSWORD = "correct-horse-9"  # noqa: S105 - the throwaway bench user's password
# The CD's patient, in the PAS register (the CD form checks the S number against it).
PATIENT = {"s_number": "S1234567", "nhs_number": "9990000018", "family_name": "SMITH", "given_name": "Margaret",
           "dob": date(1948, 3, 14), "gender": "Female", "address_line1": "12 Welford Road", "town": "Leicester",
           "postcode": "LE2 7AA"}


# --- helpers ------------------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"cd bench: {message}", file=sys.stderr)
    sys.exit(2)





def stop_tree(proc: subprocess.Popen | None, wait: float = 30) -> None:
    """SIGTERM to `proc` (the pool asks its workers for a warm shutdown); after `wait`
    seconds SIGKILL to it and every descendant it had (RQ's work-horses run in sessions of
    their own)."""
    import psutil

    if proc is None or proc.poll() is not None:
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            if member.is_running():
                member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def percentile(values: list[float], share: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


class _Hidden(HTMLParser):
    """The hidden inputs of a page (csrf_token, submission_key, ...), as a browser submits them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("type") == "hidden" and values.get("name"):
            self.fields.setdefault(values["name"] or "", values.get("value") or "")


def hidden_fields(html: bytes) -> dict[str, str]:
    parser = _Hidden()
    parser.feed(html.decode("utf-8", "replace"))
    return parser.fields


# --- the browser: one keep-alive connection and its cookies -------------------------------------------


class _Connection(http.client.HTTPConnection):
    """http.client's connection (TCP_NODELAY, one send per request with a bytes body),
    counting the TCP connections it opens: one for the whole run means keep-alive held."""

    opened = 0

    def connect(self) -> None:
        _Connection.opened += 1
        super().connect()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Browser:
    def __init__(self, port: int) -> None:
        self.conn = _Connection("127.0.0.1", port, timeout=300)
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        self.answers = 0
        self.closed = 0  # answers that said `Connection: close`

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        self.answers += 1
        self.closed += response.headers.get("Connection", "").lower() == "close"
        for value in response.headers.get_all("Set-Cookie") or []:
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(value)
            for name, morsel in cookie.items():
                if morsel.value and "1970" not in (morsel["expires"] or ""):
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return Answer(response.status, response.headers, data)

    def form(self, path: str, answers: dict[str, str]) -> Answer:
        """GET the page, then POST its hidden fields with `answers`, as a browser submits a form."""
        page = self.request("GET", path)
        if page.status != 200:
            fail(f"GET {path} answered {page.status}")
        fields = {**hidden_fields(page.body), **answers}
        self.csrf = fields.get("csrf_token", self.csrf)
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def put(self, path: str, body: bytes) -> Answer:
        return self.request("PUT", path, body, {"X-CSRFToken": self.csrf, "Content-Type": "application/octet-stream"})


def cd_answers(number: int) -> dict[str, str]:
    """The CD form's fields (as tests/forms_data.py valid_cd), one examination per run so
    that no request is a duplicate of the previous one."""
    today = date.today()
    return {
        "s_number": PATIENT["s_number"], "nhs_number": "999 000 0018", "family_name": "Smith",
        "given_name": "Margaret", "dob": "1948-03-14", "gender": "Female", "address_line1": "12 Welford Road",
        "address_line2": "", "town": "Leicester", "county": "Leicestershire", "postcode": "LE2 7AA",
        "contact_name": "Dr Priya Shah", "contact_phone": "0116 258 4000", "contact_email": "priya.shah@uhl-tr.nhs.uk",
        "comments": "", "exams-0-exam_date": today.replace(day=1).isoformat(),
        "exams-0-description": f"CT bench CD {number}", "exams-0-exam_code": "", "action": "submit",
        "cd_count": "1", "internal_post_address": "Ward 7, Leicester Royal Infirmary", "drop_off_site": "LRI",
    }


# --- the runs -----------------------------------------------------------------------------------------


@dataclass
class Cd:
    instances: int
    folder: Path  # holds CD/
    files: list[tuple[str, Path, int]]  # (path as the browser names it, source, size)

    @property
    def nbytes(self) -> int:
        return sum(size for _, _, size in self.files)


@dataclass
class Copy:
    cp: float
    cp_sync: float  # cp -r, then sync: the copy on disk
    fsync_each: float  # Python: each file copied and fsynced (the desk's write pattern alone)


@dataclass
class DeskRun:
    cd: Cd
    copy: Copy
    manifest: float
    puts: float
    scan: float
    latencies: list[float]
    job_wait: float  # last PUT's answer -> the work-horse starts the job (RQ's started_at)
    job_run: float  # RQ's started_at -> ended_at
    peak_rss: int
    server_hwm: int
    connections: int
    answers: int  # HTTP requests made by the run's browser
    closed: int  # of their answers, those that said `Connection: close`
    empty_puts: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def upload(self) -> float:
        return self.manifest + self.puts


@dataclass
class ChunkPath:
    """`receive_chunk` in process, without HTTP: seconds in all, and in its parts."""

    chunks: int
    total: float
    spool: float  # the body copied to a spool file, 64 KiB at a time
    write: float  # the spool copied into the stored file at the offset, fsync included
    fsync: float  # of which os.fsync
    finish: float  # `_finish`: the count of files still missing bytes (none commits: no chunk completes)
    commit: float  # the commits (the first one, read-only, and the claim's)

    @property
    def database(self) -> float:
        return self.total - self.spool - self.write


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    app: Any = None
    engine: Any = None
    server: subprocess.Popen | None = None
    pool: subprocess.Popen | None = None
    port: int = 0
    redis_pid_file: Path | None = None
    requests_made: int = 0

    # -- set-up --------------------------------------------------------------------------------

    def setup(self) -> None:
        import logging

        from flask_migrate import upgrade
        from sqlalchemy.exc import SAWarning

        from app import create_app
        from app.auth.models import Role, User
        from app.config import Settings
        from app.embedded_redis import ensure_embedded_redis
        from app.extensions import db
        from app.patients.models import Patient

        instance = self.tmp / "instance"
        instance.mkdir()
        data = self.tmp / "data"
        redis_url = ensure_embedded_redis(self.tmp)
        self.redis_pid_file = self.tmp / "redis" / "redis.pid"
        database_url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        secret = "bench-" + uuid.uuid4().hex
        settings = Settings(instance_path=instance, database_url=database_url, redis_url=redis_url,
                            secret_key=secret, data_dir=data)
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": secret,
                    "IEP_DATA_DIR": str(data), "IEP_WORKERS": "inbound=1", "IEP_CRON": "0", "IEP_GATEWAY": "0",
                    "PYTHONUNBUFFERED": "1"}
        for name in ("FLASK_DEBUG", "FLASK_APP", "FLASK_RUN_HOST", "FLASK_RUN_PORT", "IEP_ENV"):
            self.env.pop(name, None)
        self.app = create_app(settings)
        self.app.logger.disabled = True
        with self.app.app_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", SAWarning)  # SQLite cannot reflect expression indexes; not ours
            logging.disable(logging.INFO)  # alembic's line per revision
            try:
                upgrade()
            finally:
                logging.disable(logging.NOTSET)
            db.session.add(Patient(**PATIENT))
            user = User(email=EMAIL, name="Bench Requester", role=Role.REQUESTER, phone="x18000",
                        department="Radiology")
            user.set_password(PASSWORD)
            db.session.add(user)
            db.session.commit()
            db.engine.dispose()
        import sqlalchemy as sa

        self.engine = sa.create_engine(database_url)  # the bench's own reads while the desk runs

    def make_cd(self, instances: int, name: str) -> Cd:
        """A CD as a media creator writes it (pydicom's FileSet: DICOMDIR and PT/ST/SE/IM
        folders), `instances` CT instances of 512 x 512 in 4 series of one study."""
        from pydicom.fileset import FileSet
        from pydicom.uid import generate_uid

        from app.dicom.synth import make_instance

        folder = self.tmp / name
        root = folder / "CD"
        started = time.perf_counter()
        saved, tempfile.tempdir = tempfile.tempdir, str(self.tmp)  # FileSet stages in a temporary folder: ours
        try:
            fs = FileSet()
            study_uid = generate_uid()
            series = [generate_uid() for _ in range(4)]
            for i in range(instances):
                fs.add(make_instance(patient_id=PATIENT["s_number"], patient_name="SMITH^MARGARET",
                                     birth_date="19480314", study_uid=study_uid, series_uid=series[i % 4],
                                     study_date="20261201", accession=f"BENCH{instances}", modality="CT",
                                     series_number=i % 4 + 1, instance_number=i // 4 + 1, rows=512, cols=512,
                                     description=f"BENCH CT CD {instances}"))
            root.mkdir(parents=True)
            fs.write(root)
            del fs
        finally:
            tempfile.tempdir = saved
        files = [("/".join(p.relative_to(folder).parts), p, p.stat().st_size)
                 for p in sorted(root.rglob("*")) if p.is_file()]
        cd = Cd(instances, folder, files)
        print(f"  {name}: {len(files):,} files (DICOMDIR and {instances:,} instances), {cd.nbytes / MB:.1f} MB, "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        return cd

    def start_server(self) -> None:
        """The desk's web server as scripts/run starts it: `flask --app wsgi run`."""
        self.port = free_port()
        log = (self.tmp / "server.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "run", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                probe.request("GET", "/healthz")
                if probe.getresponse().status == 200:
                    probe.close()
                    return
                probe.close()
            except OSError:
                pass
            if time.monotonic() > deadline or self.server.poll() is not None:
                fail(f"the web server did not start:\n{tail(self.tmp / 'server.log')}")
            time.sleep(0.2)

    def start_pool(self) -> None:
        from rq import Worker

        from app.extensions import redis_conn

        log = (self.tmp / "worker.log").open("wb")
        self.pool = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        with self.app.app_context():
            deadline = time.monotonic() + 60
            while not Worker.all(connection=redis_conn()):
                if time.monotonic() > deadline or self.pool.poll() is not None:
                    fail(f"the worker pool did not start:\n{tail(self.tmp / 'worker.log')}")
                time.sleep(0.1)

    # -- the baseline --------------------------------------------------------------------------

    def copies(self, cd: Cd) -> Copy:
        """`cp -r` of the CD folder to another folder of the same disk (after a sync, so no
        earlier write is flushed while it runs), then a sync timed on its own; and Python's
        copy with an fsync per file. Each copy deleted (and synced away) after."""
        target = self.tmp / "cp-copy"
        os.sync()
        started = time.perf_counter()
        subprocess.run(["cp", "-r", str(cd.folder / "CD"), str(target)], check=True)
        cp = time.perf_counter() - started
        os.sync()
        cp_sync = time.perf_counter() - started
        shutil.rmtree(target)
        os.sync()
        target.mkdir()
        started = time.perf_counter()
        for number, (_, source, _) in enumerate(cd.files):
            with open(source, "rb") as src, open(target / str(number), "wb") as out:
                shutil.copyfileobj(src, out, 64 * 1024)
                out.flush()
                os.fsync(out.fileno())
        fsync_each = time.perf_counter() - started
        shutil.rmtree(target)
        os.sync()
        return Copy(cp, cp_sync, fsync_each)

    # -- the desk ------------------------------------------------------------------------------

    def upload_and_scan(self, cd: Cd, copy: Copy, probe: bool) -> DeskRun:
        import psutil
        import sqlalchemy as sa
        from rq.job import Job

        from app.cds.jobs import scan_job_id
        from app.cds.models import CdUpload
        from app.cds.uploads import MAX_CHUNK_BYTES
        from app.extensions import redis_conn

        browser = Browser(self.port)
        opened_before = _Connection.opened
        signed = browser.form("/login", {"email": EMAIL, "password": PASSWORD})
        if signed.status != 302:
            fail(f"signing in answered {signed.status}")
        self.requests_made += 1
        answers = cd_answers(self.requests_made)
        made = browser.form("/requests/new/cd", answers)
        if made.status == 409:  # the same examination asked for before: say it is a new request
            made = browser.form("/requests/new/cd", {**answers, "confirm_duplicate": "y"})
        match = re.search(r"/requests/([^/?#]+)", made.headers.get("Location", "")) if made.status == 302 else None
        if match is None:
            fail(f"the CD form answered {made.status} {made.headers.get('Location', '')}")
        base = f"/requests/{match.group(1)}/cd-upload"
        manifest = json.dumps({"kind": "folder", "files": [{"path": p, "size": s} for p, _, s in cd.files]}).encode()

        os.sync()  # nothing of the generation or the baseline flushed while the upload runs
        started = time.perf_counter()
        answer = browser.request("POST", base, manifest, {"Content-Type": "application/json",
                                                           "X-CSRFToken": browser.csrf})
        manifest_seconds = time.perf_counter() - started
        if answer.status != 201:
            fail(f"the manifest answered {answer.status}: {answer.body[:300]!r}")
        started_upload = answer.json()
        upload_id = started_upload["upload_id"]
        ids = {f["path"]: f["id"] for f in started_upload["files"]}
        if set(ids) != {p for p, _, _ in cd.files}:
            fail("the manifest's answer does not list the files sent")

        empty: list[float] = []
        if probe:  # the request path without bytes: route, sign-in, CSRF, lookups, nothing written
            for path, _, _ in cd.files:
                began = time.perf_counter()
                reply = browser.put(f"{base}/{upload_id}/files/{ids[path]}?offset=0", b"")
                empty.append(time.perf_counter() - began)
                if reply.status != 200 or reply.json().get("received") != 0:
                    fail(f"an empty PUT answered {reply.status}: {reply.body[:200]!r}")
            os.sync()

        latencies: list[float] = []
        last: dict[str, Any] = {}
        started = time.perf_counter()
        for path, source, size in cd.files:
            with open(source, "rb") as fh:
                offset = 0
                while offset < size:
                    piece = fh.read(MAX_CHUNK_BYTES)
                    began = time.perf_counter()
                    reply = browser.put(f"{base}/{upload_id}/files/{ids[path]}?offset={offset}", piece)
                    latencies.append(time.perf_counter() - began)
                    if reply.status != 200:
                        fail(f"PUT {path} at {offset} answered {reply.status}: {reply.body[:300]!r}")
                    last = reply.json()
                    if last.get("received") != offset + len(piece):
                        fail(f"PUT {path} at {offset}: the desk says {last.get('received')} bytes")
                    offset += len(piece)
        answered = time.perf_counter()
        answered_wall = time.time()
        put_seconds = answered - started
        if not (last.get("complete") and last.get("queued")):
            fail(f"the last PUT's answer is not complete and queued: {last}")

        # The scan: poll the row (and the job: one that raised leaves the row SCANNING);
        # sample the work-horse tree as bench/transfer.py does.
        with self.app.app_context():
            job = Job.fetch(scan_job_id(upload_id), connection=redis_conn())
        supervisor = psutil.Process(self.pool.pid)
        peak, hwm, state, error, job_status = 0, 0, "", "", ""
        tree: list[psutil.Process] = []
        next_look = 0.0
        deadline = answered + SCAN_TIMEOUT
        while True:
            now = time.monotonic()
            if now >= next_look:
                next_look = now + RSS_LOOK_SECONDS
                with self.engine.connect() as conn:
                    state, error = conn.execute(sa.select(CdUpload.state, CdUpload.error)
                                                .where(CdUpload.id == upload_id)).one()
                job_status = job.get_status(refresh=True)
                tree = []
                with contextlib.suppress(psutil.NoSuchProcess):
                    for horse in (h for w in supervisor.children() for h in w.children()):
                        tree += [horse, *horse.children(recursive=True)]
                        hwm = max(hwm, vm_hwm(horse.pid))
            try:
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.NoSuchProcess:
                next_look = 0.0
            if state in ("scanned", "failed") or job_status in ("failed", "stopped", "canceled") \
                    or time.perf_counter() > deadline:
                break
            time.sleep(RSS_SAMPLE_SECONDS)
        scan_seconds = time.perf_counter() - answered
        for horse in tree:  # the peak may come in the last 50 ms (the result's JSON)
            hwm = max(hwm, vm_hwm(horse.pid))
        job.refresh()
        if state != "scanned":
            latest = job.latest_result()
            why = error or (latest.exc_string if latest and latest.exc_string else f"job {job_status or 'timeout'}")
            fail(f"the upload ended {state or 'unscanned'}: {why}\n--- {self.tmp / 'worker.log'} ---\n"
                 f"{tail(self.tmp / 'worker.log')}")
        job_wait = job.started_at.timestamp() - answered_wall if job.started_at else float("nan")
        job_run = (job.ended_at - job.started_at).total_seconds() if job.started_at and job.ended_at else float("nan")

        run = DeskRun(cd, copy, manifest_seconds, put_seconds, scan_seconds, latencies, job_wait, job_run,
                      max(peak, hwm), vm_hwm(self.server.pid), 0, 0, 0, empty)
        self.check(browser, base, upload_id, cd, run)
        run.connections, run.answers, run.closed = _Connection.opened - opened_before, browser.answers, browser.closed
        return run

    def check(self, browser: Browser, base: str, upload_id: int, cd: Cd, run: DeskRun) -> None:
        """Every byte on the desk, and the scan's result exactly the CD."""
        import sqlalchemy as sa

        from app.cds import storage
        from app.cds.models import CdUpload
        from app.cds.scan import ScanResult

        status = browser.request("GET", f"{base}/{upload_id}")
        body = status.json() if status.status == 200 else {}
        if body.get("state") != "scanned" or body.get("files_done") != len(cd.files) \
                or body.get("bytes_received") != cd.nbytes:
            fail(f"the upload's status is not every file scanned: {status.status} "
                 f"{ {k: v for k, v in body.items() if k != 'files'} }")
        with self.app.app_context():
            for entry in body["files"]:
                source = cd.folder / entry["path"]
                if not filecmp.cmp(source, storage.file_path(upload_id, entry["id"]), shallow=False):
                    fail(f"the stored {entry['path']} differs from the CD's")
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(CdUpload.scan_json).where(CdUpload.id == upload_id)).scalar_one()
        result = ScanResult.from_json(text)
        instances = sum(s.instances for p in result.patients for s in p.studies)
        studies = sum(len(p.studies) for p in result.patients)
        if instances != cd.instances or result.problems or len(result.patients) != 1 or studies != 1 \
                or not result.used_dicomdir or result.files_seen != len(cd.files):
            fail(f"the scan found {len(result.patients)} patient(s), {studies} study(ies), {instances} instance(s), "
                 f"files seen {result.files_seen}, DICOMDIR used {result.used_dicomdir}, "
                 f"problems {[(p.name, p.reason) for p in result.problems][:5]}")
        run.notes.append(f"checked: {len(cd.files):,} files stored byte for byte; scan: 1 patient, 1 study, "
                         f"{instances:,} instances, DICOMDIR used, no problems")

    def chunk_path(self, cd: Cd) -> ChunkPath:
        """`uploads.receive_chunk` called in this process, without HTTP, for each file of a
        fresh upload of `cd` but the last (so nothing completes and no scan is queued), its
        spool, its write (with fsync) and its os.fsync calls timed by wrappers; the rest of
        its time is the database: the claim's two UPDATEs, the completeness count, the commit."""
        import io

        import sqlalchemy as sa

        from app.auth.models import User
        from app.cds import uploads
        from app.cds.models import CdFile, CdUpload
        from app.extensions import db
        from app.requests.models import Request

        browser = Browser(self.port)
        if browser.form("/login", {"email": EMAIL, "password": PASSWORD}).status != 302:
            fail("signing in for the in-process pass failed")
        self.requests_made += 1
        answers = cd_answers(self.requests_made)
        made = browser.form("/requests/new/cd", answers)
        if made.status == 409:
            made = browser.form("/requests/new/cd", {**answers, "confirm_duplicate": "y"})
        match = re.search(r"/requests/([^/?#]+)", made.headers.get("Location", ""))
        if made.status != 302 or match is None:
            fail(f"the CD form answered {made.status}")
        spent = {"spool": 0.0, "write": 0.0, "fsync": 0.0, "finish": 0.0, "commit": 0.0}

        def timed(name: str, real: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    spent[name] += time.perf_counter() - began
            return wrapper

        real_spool, real_write, real_fsync, real_finish = uploads._spool, uploads._write_at, os.fsync, uploads._finish
        total = 0.0
        with self.app.app_context():
            req = db.session.scalar(sa.select(Request).where(Request.call_ref == match.group(1)))
            user = db.session.scalar(sa.select(User).where(User.email == EMAIL))
            manifest = [{"path": p, "size": size} for p, _, size in cd.files]
            upload = uploads.start_upload(req, user, manifest, "folder").upload
            upload_id, user_id = upload.id, user.id
            rows = {f.relpath: f.id for f in uploads.files_of(upload)}
            os.sync()
            uploads._spool, uploads._write_at, os.fsync = (timed("spool", real_spool), timed("write", real_write),
                                                           timed("fsync", real_fsync))
            uploads._finish = timed("finish", real_finish)
            db.session.commit = timed("commit", db.session.commit)  # the scoped session's, for this pass
            try:
                for path, source, size in cd.files[:-1]:
                    data = source.read_bytes()
                    # Loaded fresh, as the route's _upload_of and _file_of do before the call.
                    upload = db.session.get(CdUpload, upload_id)
                    file = db.session.get(CdFile, rows[path])
                    began = time.perf_counter()
                    result = uploads.receive_chunk(upload, file, 0, io.BytesIO(data), size, user_id=user_id)
                    total += time.perf_counter() - began
                    if result.received != size or result.complete:
                        fail(f"in process, {path} took {result.received} of {size} bytes")
            finally:
                uploads._spool, uploads._write_at, os.fsync, uploads._finish = (real_spool, real_write, real_fsync,
                                                                                 real_finish)
                del db.session.commit
                db.session.remove()
        return ChunkPath(len(cd.files) - 1, total, spent["spool"], spent["write"], spent["fsync"], spent["finish"],
                         spent["commit"])

    # -- tear-down ------------------------------------------------------------------------------

    def close(self) -> None:
        stop_tree(self.server, wait=10)
        stop_tree(self.pool)
        if self.engine is not None:
            self.engine.dispose()
        if self.redis_pid_file is not None and self.redis_pid_file.exists():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self.redis_pid_file.read_text().strip()), signal.SIGTERM)


# --- the report ---------------------------------------------------------------------------------------


def report(small: DeskRun, full: DeskRun, paths: list[ChunkPath]) -> bool:
    print()
    for run in (small, full):
        cd, copy = run.cd, run.copy
        n, size = len(cd.files), cd.nbytes / MB
        print(f"CD of {cd.instances:,} instances: {n:,} files with the DICOMDIR, {size:.1f} MB; "
              f"{len(run.latencies):,} PUTs; the browser's {run.answers:,} requests took {run.connections:,} TCP "
              f"connections ({run.closed:,} answers said `Connection: close`)")
        print(f"  {'':<44} {'seconds':>8} {'MB/s':>8} {'files/s':>8} {'vs cp -r':>9}")

        def line(label: str, seconds: float, copy: Copy = copy, n: int = n, size: float = size) -> None:
            print(f"  {label:<44} {seconds:>8.2f} {size / seconds:>8.1f} {n / seconds:>8.0f} "
                  f"{seconds / copy.cp:>8.2f}x")

        line("cp -r [baseline]", copy.cp)
        line("  cp -r; sync (reference)", copy.cp_sync)
        line("  copy + fsync per file, Python (reference)", copy.fsync_each)
        line("desk upload (manifest + PUTs)", run.upload)
        line("  manifest (POST, JSON)", run.manifest)
        line("  PUTs", run.puts)
        line("desk scan (last PUT answered -> scanned)", run.scan)
        line("desk upload + scan", run.upload + run.scan)
        lat = [x * 1000 for x in run.latencies]
        tenth = max(len(lat) // 10, 1)
        print(f"  PUT latency ms: median {statistics.median(lat):.2f}, p95 {percentile(lat, 0.95):.2f}, "
              f"max {max(lat):.1f}; first tenth median {statistics.median(lat[:tenth]):.2f}, "
              f"last tenth {statistics.median(lat[-tenth:]):.2f}")
        if run.empty_puts:
            empty = [x * 1000 for x in run.empty_puts]
            print(f"  {len(empty):,} empty PUTs (no bytes, no write): {sum(run.empty_puts):.2f} s, median "
                  f"{statistics.median(empty):.2f} ms, p95 {percentile(empty, 0.95):.2f} ms "
                  f"({sum(run.empty_puts) / run.puts:.0%} of the PUTs' time)")
        print(f"  scan job: {run.job_wait:.2f} s from the last answer to the work-horse's start, "
              f"{run.job_run:.2f} s running ({cd.instances / run.job_run:.0f} instances/s)")
        print(f"  scanning work-horse peak RSS {run.peak_rss / 2**20:.1f} MiB; web server VmHWM so far "
              f"{run.server_hwm / 2**20:.1f} MiB")
        for note in run.notes:
            print(f"  {note}")
        print()
    print("receive_chunk in process (no HTTP), per chunk, on a fresh upload of each CD (all files but the last):")
    for run, path in zip((small, full), paths, strict=True):
        per = 1000 / path.chunks
        print(f"  {len(run.cd.files):>6,} files: {path.total * per:.2f} ms = spool {path.spool * per:.2f} + write "
              f"{path.write * per:.2f} (fsync {path.fsync * per:.2f}) + database {path.database * per:.2f} (_finish: "
              f"upload row reloaded, missing files counted {path.finish * per:.2f}; commits {path.commit * per:.2f})")
    path = paths[-1]
    per = 1000 / path.chunks
    empty = statistics.mean(full.empty_puts) * 1000 if full.empty_puts else float("nan")
    put = statistics.mean(full.latencies) * 1000
    rest = put - empty - path.total * per
    print(f"  a PUT's {put:.2f} ms (mean) = request without bytes {empty:.2f} + receive_chunk {path.total * per:.2f}"
          f" + the rest (the body through the socket and Werkzeug's stream, the client) {rest:.2f}")
    print()
    growth = full.peak_rss / small.peak_rss - 1
    ok = growth <= BAR_RSS_GROWTH
    print(f"RATIO desk upload + scan / cp -r: {(full.upload + full.scan) / full.copy.cp:.1f}x "
          f"(upload {full.upload / full.copy.cp:.1f}x, scan {full.scan / full.copy.cp:.1f}x) "
          f"at {full.cd.instances:,} instances")
    print(f"  {'PASS' if ok else 'FAIL'}  scanning work-horse peak RSS at {full.cd.instances:,} instances within "
          f"10 % of {small.cd.instances:,}: {small.peak_rss / 2**20:.1f} -> {full.peak_rss / 2**20:.1f} MiB "
          f"({growth:+.1%})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances on the CD (default 1000)")
    parser.add_argument("--small", type=int, default=200, help="instances on the small CD (default 200)")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the scratch folder goes (the CDs, the copies, the desk's storage: one disk)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, database, files)")
    args = parser.parse_args(argv)
    if not 0 < args.small < args.instances:
        fail("--small must be between 0 and --instances")
    # Each CD lives as its source, the desk's stored copy and, while the baseline runs, a
    # copy; FileSet stages each once more while it writes.
    need = int((args.instances + args.small) * 0.53 * MB * 3.3)
    free = shutil.disk_usage(args.tmp_dir).free
    if free < need:
        fail(f"{args.tmp_dir} has {free / 1e9:.1f} GB free; the run needs about {need / 1e9:.1f} GB")
    # A SIGTERM (a CI's timeout) unwinds through the finally below like Ctrl+C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmp = Path(tempfile.mkdtemp(prefix="iep-bench-cd-", dir=args.tmp_dir))
    bench = Bench(args, tmp)
    try:
        df = subprocess.run(["df", "--output=source,fstype", str(tmp)], capture_output=True, text=True, check=False)
        where = " ".join(df.stdout.splitlines()[1].split()) if df.returncode == 0 else "?"
        print(f"scratch folder {tmp} ({where}): the CDs, the copies and the desk's storage")
        bench.setup()
        print("generating the CDs (pydicom FileSet) ...", flush=True)
        small_cd = bench.make_cd(args.small, "cd-small")
        full_cd = bench.make_cd(args.instances, "cd-full")
        bench.start_server()
        bench.start_pool()
        runs = []
        for cd, probe in ((small_cd, False), (full_cd, True)):
            print(f"{cd.instances:,} instances: cp -r ...", flush=True)
            copy = bench.copies(cd)
            print(f"  cp -r {copy.cp:.2f} s; upload and scan through the desk ...", flush=True)
            run = bench.upload_and_scan(cd, copy, probe)
            print(f"  upload {run.upload:.2f} s, scan {run.scan:.2f} s, work-horse peak RSS "
                  f"{run.peak_rss / 2**20:.1f} MiB", flush=True)
            runs.append(run)
        print("receive_chunk in process, without HTTP ...", flush=True)
        paths = [bench.chunk_path(small_cd), bench.chunk_path(full_cd)]
        ok = report(*runs, paths)
    finally:
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
