"""Trauma to NUH under a full outbound queue: Send to the first C-STORE, against a standard export.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/trauma.py [--runs 5] [--backlog 300] [--matrix 512]
                                     [--load-instances 400] [--postgres-url URL]
                                     [--tmp-dir /tmp] [--keep]

Issue 10's last acceptance line: the time from pressing Send to the first C-STORE at NUH
while the outbound queue is full, printed beside the same time for a standard export, as
a ratio. One scratch desk (SQLite file, or a scratch database on --postgres-url, migrated
with `flask_migrate.upgrade`; an embedded Redis; IEP_DATA_DIR in a temporary folder) and
the real pool: `python worker.py` with IEP_WORKERS="outbound-bluelight=1;outbound-bluelight,
outbound,outbound-batch=4" (one Blue Light worker, four general outbound workers), no
cron, no gateway. The peers, on loopback:

* **the local PACS** (UHLPACSWFM01): an Orthanc holding SMITH's three studies (CT HEAD
  2 x 12, CT CHEST ABDOMEN PELVIS 3 x 10, XR CHEST 1 x 2 instances of --matrix squared,
  16 bit) and PATEL's load study (--load-instances of 64 x 64);
* **a slow PACS**: an Orthanc without TCP_NODELAY and with SyncStorageArea (every
  instance waits for a delayed ACK and an fsync), which keeps the general workers busy;
* **NUH** ("NUH Radiology PACS", the trauma destination): a pynetdicom AE in a thread of
  the bench process. Its C-STORE handler takes `time.monotonic()` first thing, before
  decoding anything, so the timestamp is the moment the first complete C-STORE request
  of the run reached NUH, on the same clock as the Send. It keeps each instance's UIDs
  (not the files) and answers the engine's verification (C-FIND, SERIES and IMAGE level)
  from them, so every transfer can end Delivered and be checked instance by instance.

Every case sends the same two studies (CT HEAD and the CT CAP, 54 instances) with the same
pasted report, which goes as an Encapsulated PDF in the first study: 55 instances. The
clock starts when the POST that a browser makes on Send is issued through the Flask test
client of the bench process, signed in through /login, and stops at NUH's first C-STORE.
It covers the POST (request and transfer rows, commit, enqueue), the wait for a worker,
and the work before anything is sent, all of it every time: listing the instances at
the local PACS (C-FIND), retrieving both studies whole into staging (C-GET), making the
report PDF, and opening the association to NUH. Cases:

1. **standard export, idle pool** (the named baseline): a requester submits an export
   (/requests/new/export), an AM radiology user opens it, searches the local PACS
   (/requests/<ref>/pacs-search), ticks the two studies, picks NUH, pastes the report and
   presses "Send and create transaction" (POST /requests/<ref>/transfers, priority
   Standard). Nothing else runs.
2. **trauma, idle pool** (for reference): a radiologist on /trauma finds SMITH, confirms
   her, ticks the two studies, pastes the report, checks it, and presses "Send to
   Nottingham now" (the htmx POST of the screen's form, action=send). Nothing else runs.
3. **trauma, full queue**: the same, while four standard exports of the load study to the
   slow PACS hold the four general workers and at least --backlog more wait on the
   `outbound` queue (each made with `service.create_transfer`, committed and queued with
   `service.enqueue`, as the desk's Send does; topped up before each run). Before each
   Send the bench checks, and aborts if it is not so: four load exports RUNNING or
   VERIFYING (database) on the four general RQ workers, all busy; at least --backlog load
   exports QUEUED (database), with a job each on `outbound` (RQ; distinct transfers
   counted, second jobs for one transfer shown); the Blue Light worker idle and its queue
   empty. The same is read again at the first C-STORE and printed.

One untimed warm-up of cases 1 and 2 comes first; then --runs rounds of cases 1 and 2,
interleaved; then the load and --runs runs of case 3. Each run makes a new request, and
NUH's record is emptied before it. Every run is checked: the POST answers with the
redirect a browser follows, NUH's first C-STORE comes, the transfer ends Delivered on its
first attempt with every instance confirmed, NUH received exactly the 54 instances plus
one Encapsulated PDF, and the request is Delivered; the RQ worker that ran it is named.
For each case the median of the runs is printed, with every run, a split of the median
run (POST; Send to the worker's start, from the row's `started_at`; start to first
C-STORE), and the ratio to the baseline. For the load, the bench also says where a
standard export pressed at the last trauma Send would have stood in line and how long
it would have waited there, from the time the first four load exports took (the bench
waits for those to end after the trauma runs; it does not wait for that export).
Everything generated lives in a temporary folder deleted at the end unless --keep; the
pool, the Orthancs and Redis are stopped by pid (the scratch PostgreSQL database is
dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's
from bench.support import free_port, tail  # noqa: E402 - after the repository is on sys.path

PASSWORD = "correct-horse-9"  # noqa: S105 - the throwaway bench users' password
GENERAL_LANES = "outbound-bluelight=1;outbound-bluelight,outbound,outbound-batch=4"
GENERAL_WORKERS = 4
OUR_AE = "IEPDESK"  # the pool's GATEWAY_AE_TITLE: the AE title the worker calls with
NUH_AE = "NUHPACS"
NUH_NAME = "NUH Radiology PACS"  # the trauma destination (TRAUMA_NODE's default)
NUH_INSTITUTION = "Nottingham University Hospitals NHS Trust"
LOCAL_PACS = "UHLPACSWFM01"  # LOCAL_PACS_NODE's default
REPORT = "CT head: no acute intracranial haemorrhage.\nImpression: <no fracture> & no collection."
SMITH = {"s_number": "S1234567", "nhs_number": "999 000 0018"}
# SMITH's studies on the local PACS: (date, description, accession, series, per series, sent?).
STUDIES = [
    ("20261203", "CT HEAD", "ACC1001", 2, 12, True),
    ("20261204", "CT CHEST ABDOMEN PELVIS", "ACC1002", 3, 10, True),
    ("20250610", "XR CHEST", "ACC0900", 1, 2, False),
]
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
LOAD_CHECK_SECONDS = 60  # how long to wait for the four general workers to be busy
ORTHANC = "/usr/sbin/Orthanc"


# --- helpers ------------------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"trauma bench: {message}", file=sys.stderr)
    sys.exit(2)




def stop(proc: subprocess.Popen | None, wait: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def quick_config():  # noqa: ANN201
    from app.dicom.ae import AEConfig, Timeouts

    return AEConfig(ae_title="BENCH", timeouts=Timeouts(connection=2, acse=5, dimse=10, network=30))


@dataclass
class Orthanc:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path


def start_orthanc(folder: Path, aet: str, *, desk_port: int, nodelay: bool = True,
                  sync_storage: bool = False) -> Orthanc:
    """An Orthanc on loopback that knows the desk (C-GET and C-FIND need it known), as
    tests/dicom_peers.py starts one. nodelay=False with sync_storage: the slow PACS."""
    import json

    from app.dicom.ae import Node
    from app.dicom.errors import DicomFailure
    from app.dicom.scu import echo

    folder.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": f"bench-{aet.lower()}", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"), "DicomAet": aet, "DicomPort": port, "HttpPort": free_port(),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
        "DicomModalities": {"desk": [OUR_AE, "127.0.0.1", desk_port]}, "SyncStorageArea": sync_storage,
        "MaximumPduLength": 131072, "DicomAssociationCloseDelay": 0, "SaveJobs": False, "Plugins": [],
        "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], cwd=folder, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            echo(Node(aet, "127.0.0.1", port), config=quick_config())
            return Orthanc(aet, port, proc, log)
        except DicomFailure:
            if time.monotonic() > deadline or proc.poll() is not None:
                stop(proc)
                fail(f"Orthanc {aet} did not answer a C-ECHO:\n{tail(log)}")
            time.sleep(0.1)


# --- NUH: the bench's own Storage SCP, which also answers the verification ----------------------------


@dataclass(frozen=True)
class Held:
    study_uid: str
    series_uid: str
    sop_class: str
    series_number: str
    instance_number: str


class NuhScp:
    """NUH's PACS: accepts every storage class uncompressed, records the monotonic time
    of the first C-STORE since `reset`, keeps each instance's UIDs and answers C-FIND
    (Study Root, SERIES and IMAGE level) from them. Handlers never raise: a failure is
    recorded (it fails the run) and answered with a failure status (PS3.4 B.2.3, C.4.1.1.4)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first = threading.Event()
        self.first_store: float | None = None
        self.held: dict[str, Held] = {}
        self.errors: list[str] = []
        self.server: Any = None
        self.port = 0

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

        from app.dicom.ae import set_tcp_nodelay

        ae = AE(ae_title=NUH_AE)
        ae.maximum_pdu_size = 131072
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        for context in AllStoragePresentationContexts:  # uncompressed syntaxes (pynetdicom's default)
            ae.add_supported_context(context.abstract_syntax)
        handlers = [(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_FIND, self._on_find)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def reset(self) -> None:
        with self.lock:
            self.first.clear()
            self.first_store = None
            self.held = {}
            self.errors = []

    def _on_store(self, event: Any) -> int:
        now = time.monotonic()  # first thing: before the dataset is decoded
        with self.lock:
            if self.first_store is None:
                self.first_store = now
                self.first.set()
        try:
            ds = event.dataset
            held = Held(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(event.request.AffectedSOPClassUID),
                        str(ds.get("SeriesNumber", "") or ""), str(ds.get("InstanceNumber", "") or ""))
            with self.lock:
                self.held[str(event.request.AffectedSOPInstanceUID)] = held
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - a handler answers with a status, never raises
            with self.lock:
                self.errors.append(f"C-STORE: {type(exc).__name__}: {exc}")
            return 0xC210  # Cannot understand (PS3.4 B.2.3)

    def _on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        from pydicom.dataset import Dataset

        try:
            query = event.identifier
            level = str(query.get("QueryRetrieveLevel", ""))
            study = str(query.get("StudyInstanceUID", "") or "")
            series = str(query.get("SeriesInstanceUID", "") or "")
            with self.lock:
                rows = [(sop, h) for sop, h in self.held.items() if h.study_uid == study]
            answers = []
            if level == "SERIES":
                for series_uid in sorted({h.series_uid for _sop, h in rows}):
                    ds = Dataset()
                    ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SERIES", study, series_uid
                    ds.SeriesNumber = next(h.series_number for _s, h in rows if h.series_uid == series_uid)
                    ds.SeriesDescription = ""
                    answers.append(ds)
            elif level == "IMAGE":
                for sop, h in rows:
                    if series and h.series_uid != series:
                        continue
                    ds = Dataset()
                    ds.QueryRetrieveLevel, ds.StudyInstanceUID, ds.SeriesInstanceUID = "IMAGE", study, h.series_uid
                    ds.SOPInstanceUID, ds.SOPClassUID, ds.InstanceNumber = sop, h.sop_class, h.instance_number
                    answers.append(ds)
            else:
                yield 0xC000, None  # unable to process: only the levels the desk asks for
                return
        except Exception as exc:  # noqa: BLE001 - a handler answers with a status, never raises
            with self.lock:
                self.errors.append(f"C-FIND: {type(exc).__name__}: {exc}")
            yield 0xC000, None
            return
        for ds in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds

    def snapshot(self) -> tuple[float | None, dict[str, Held], list[str]]:
        with self.lock:
            return self.first_store, dict(self.held), list(self.errors)


# --- the browser's forms --------------------------------------------------------------------------------


@dataclass
class Form:
    """One <form> as a browser would submit it, unchanged: `fields` in document order
    (text and hidden inputs, ticked boxes, textareas, each select's chosen option),
    plus the boxes one could tick and each select's options (value, label)."""

    action: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    boxes: dict[str, list[str]] = field(default_factory=dict)  # name -> the values one may tick
    options: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def names(self) -> set[str]:
        return {name for name, _ in self.fields} | set(self.boxes) | set(self.options)

    def submit(self, set_: dict[str, str] | None = None,
               tick: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
        """The form data with `set_` fields replaced (or added) and `tick` boxes ticked."""
        set_, tick = set_ or {}, tick or {}
        data = [(k, v) for k, v in self.fields if k not in set_]
        data += list(set_.items())
        for name, values in tick.items():
            for value in values:
                if value not in self.boxes.get(name, []):
                    fail(f"the form at {self.action} offers no box {name}={value}")
                if (name, value) not in data:
                    data.append((name, value))
        return data


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._open = False
        self._text: list[str] | None = None
        self._textarea = ""
        self._select: tuple[str, list[tuple[str, str, bool]]] | None = None
        self._option: tuple[str | None, bool] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(action=a.get("action", "")))
            self._open = True
            return
        if not self._open:
            return
        form, name = self.forms[-1], a.get("name", "")
        if tag == "input" and name:
            kind = a.get("type", "text").lower()
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            if kind in ("checkbox", "radio"):
                form.boxes.setdefault(name, []).append(a.get("value", "on"))
                if "checked" in a:
                    form.fields.append((name, a.get("value", "on")))
            else:
                form.fields.append((name, a.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []
        elif tag == "select" and name:
            self._select = (name, [])
        elif tag == "option" and self._select is not None:
            self._option, self._text = (a.get("value"), "selected" in a), []

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = False
        elif tag == "textarea" and self._textarea and self._text is not None:
            text = "".join(self._text)
            self.forms[-1].fields.append((self._textarea, text[1:] if text.startswith("\n") else text))
            self._textarea, self._text = "", None
        elif tag == "option" and self._select is not None and self._option is not None:
            label = " ".join("".join(self._text or []).split())
            value, selected = self._option
            self._select[1].append((label if value is None else value, label, selected))
            self._option, self._text = None, None
        elif tag == "select" and self._select is not None:
            name, options = self._select
            form = self.forms[-1]
            form.options[name] = [(value, label) for value, label, _ in options]
            chosen = next((value for value, _, selected in options if selected), options[0][0] if options else None)
            if chosen is not None:
                form.fields.append((name, chosen))
            self._select = None


def form_on(html: str, *, action_ends: str = "", having: str = "") -> Form:
    parser = _FormParser()
    parser.feed(html)
    for form in parser.forms:
        if (not action_ends or form.action.split("?")[0].endswith(action_ends)) and (
                not having or having in form.names()):
            return form
    fail(f"no form {'to ' + action_ends if action_ends else ''}{' with ' + having if having else ''} on the page")


def checked(response: Any, status: int | tuple[int, ...], what: str) -> str:
    text = response.get_data(as_text=True)
    if response.status_code not in ((status,) if isinstance(status, int) else status):
        flat = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
        fail(f"{what}: HTTP {response.status_code}, expected {status}: {flat[:600]}")
    return text


# --- figures ------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """The load as the database and RQ see it at one moment."""

    running: int  # load exports RUNNING or VERIFYING (database)
    general_busy: int  # general RQ workers busy
    waiting: int  # load exports QUEUED (database)
    jobs: int  # jobs on `outbound` (RQ)
    queued_transfers: int  # distinct transfers among those jobs
    bluelight_idle: bool
    bluelight_jobs: int

    def __str__(self) -> str:
        dup = self.jobs - self.queued_transfers
        return (f"{self.running} running on {self.general_busy}/{GENERAL_WORKERS} busy general workers, "
                f"{self.waiting} waiting ({self.jobs} jobs on `outbound`"
                + (f", {dup} of them second jobs for the same transfer" if dup else "")
                + f"), Blue Light worker {'idle' if self.bluelight_idle else 'busy'}")


@dataclass
class Run:
    case: str
    seconds: float  # Send to NUH's first C-STORE
    post: float  # the POST alone
    to_worker: float  # Send to the transfer's started_at (wall clock)
    call_ref: str
    transfer_id: int
    worker: str
    load_before: Load | None = None
    load_at_store: Load | None = None


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    app: Any = None
    env: dict[str, str] = field(default_factory=dict)
    redis_pid_file: Path | None = None
    pool: subprocess.Popen | None = None
    orthancs: list[Orthanc] = field(default_factory=list)
    nuh: NuhScp = field(default_factory=NuhScp)
    pacs_id: int = 0
    nuh_id: int = 0
    slow_id: int = 0
    load_uid: str = ""
    sent_uids: list[str] = field(default_factory=list)  # CT HEAD, CT CAP
    expected: set[str] = field(default_factory=set)  # their SOP Instance UIDs
    clients: dict[str, Any] = field(default_factory=dict)
    postgres: tuple[Any, str] | None = None  # (admin engine, scratch database name)

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """An app context for the bench's own reads and writes, its session removed after
        (the test client's requests run outside it, each in a context of its own)."""
        from app.extensions import db

        with self.app.app_context():
            try:
                yield db.session
            finally:
                db.session.remove()

    # -- set-up ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        import sqlalchemy as sa
        from flask_migrate import upgrade
        from sqlalchemy.exc import SAWarning

        from app import create_app
        from app.config import Settings
        from app.embedded_redis import ensure_embedded_redis
        from app.extensions import db

        instance = self.tmp / "instance"
        instance.mkdir()
        data = self.tmp / "data"
        redis_url = ensure_embedded_redis(self.tmp)
        self.redis_pid_file = self.tmp / "redis" / "redis.pid"
        if self.args.postgres_url:
            admin = sa.create_engine(self.args.postgres_url, isolation_level="AUTOCOMMIT")
            name = f"iep_bench_trauma_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            self.postgres = (admin, name)
            database_url = admin.url.set(database=name).render_as_string(hide_password=False)
        else:
            database_url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        secret = "bench-" + uuid.uuid4().hex
        settings = Settings(instance_path=instance, database_url=database_url, redis_url=redis_url,
                            secret_key=secret, data_dir=data, gateway_ae_title=OUR_AE)
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": secret,
                    "IEP_DATA_DIR": str(data), "IEP_WORKERS": GENERAL_LANES, "IEP_CRON": "0", "IEP_GATEWAY": "0",
                    "GATEWAY_AE_TITLE": OUR_AE, "PYTHONUNBUFFERED": "1"}
        self.env.pop("TCP_NODELAY", None)  # the worker sets TCP_NODELAY on its own sockets
        self.app = create_app(settings)
        self.app.logger.disabled = True
        with self.app.app_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", SAWarning)  # SQLite cannot reflect expression indexes; not ours
            logging.disable(logging.INFO)  # alembic's line per revision
            try:
                upgrade()
            finally:
                logging.disable(logging.NOTSET)
            db.engine.dispose()
        self.make_people()
        self.make_peers()

    def make_people(self) -> None:
        from app.auth.models import Role, User
        from app.patients.models import Patient

        with self.db() as session:
            session.add_all([
                Patient(s_number="S1234567", nhs_number="9990000018", family_name="SMITH", given_name="Margaret",
                        dob=date(1948, 3, 14), gender="Female", address_line1="12 Welford Road", town="Leicester",
                        postcode="LE2 7AA"),
                Patient(s_number="S7654321", nhs_number="9990000026", family_name="PATEL", given_name="Ravi",
                        dob=date(1975, 11, 2), gender="Male", address_line1="4 Narborough Road", town="Leicester",
                        postcode="LE3 0BQ"),
            ])
            for role in (Role.REQUESTER, Role.AM_RADIOLOGY, Role.RADIOLOGIST):
                user = User(email=f"{role.value}@bench.uhl", name=f"Bench {role.label}", role=role, phone="x18000",
                            department="Radiology")
                user.set_password(PASSWORD)
                session.add(user)
            session.commit()

    def make_peers(self) -> None:
        from pydicom import dcmread

        from app.dicom import scu
        from app.dicom.synth import make_study
        from app.transfers.nodes import upsert_node

        studies = self.tmp / "studies"
        started = time.perf_counter()
        desk_port = free_port()  # only known to the Orthancs: the bench's pool retrieves by C-GET
        pacs = start_orthanc(self.tmp / "pacs", "UHLPACS", desk_port=desk_port)
        self.orthancs.append(pacs)
        slow = start_orthanc(self.tmp / "slow", "SLOWPACS", desk_port=desk_port, nodelay=False, sync_storage=True)
        self.orthancs.append(slow)
        self.nuh.start()
        m = self.args.matrix
        for n, (day, description, accession, series, per_series, sent) in enumerate(STUDIES):
            files = make_study(studies / f"smith{n}", patient_id="S1234567", patient_name="SMITH^MARGARET",
                               birth_date="19480314", study_date=day, description=description, accession=accession,
                               n_series=series, n_per_series=per_series, rows=m, cols=m)
            if not scu.send_files(scu_node(pacs), files, config=quick_config()).ok:
                fail(f"could not store {description} on the local PACS")
            if sent:
                self.sent_uids.append(str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
                self.expected |= {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        load = make_study(studies / "patel", patient_id="S7654321", patient_name="PATEL^RAVI", birth_date="19751102",
                          study_date="20261001", description="CT LOAD", accession="ACC9000",
                          n_per_series=self.args.load_instances, rows=64, cols=64)
        if not scu.send_files(scu_node(pacs), load, config=quick_config()).ok:
            fail("could not store the load study on the local PACS")
        self.load_uid = str(dcmread(load[0], stop_before_pixels=True).StudyInstanceUID)
        shutil.rmtree(studies)
        with self.db() as session:
            nodes = [upsert_node(LOCAL_PACS, pacs.name, "127.0.0.1", pacs.port, "local_pacs"),
                     upsert_node(NUH_NAME, NUH_AE, "127.0.0.1", self.nuh.port, "remote", NUH_INSTITUTION),
                     upsert_node("Slow PACS", slow.name, "127.0.0.1", slow.port, "remote")]
            session.commit()
            self.pacs_id, self.nuh_id, self.slow_id = (node.id for node in nodes)
        print(f"peers ready in {time.perf_counter() - started:.1f} s: local PACS (Orthanc) with SMITH's 3 studies "
              f"({len(self.expected)} instances to send, {m} x {m}) and the load study "
              f"({self.args.load_instances} instances); slow PACS (Orthanc, no TCP_NODELAY, SyncStorageArea); "
              f"NUH (pynetdicom SCP on port {self.nuh.port})", flush=True)

    def start_pool(self) -> None:
        from rq import Worker

        from app.extensions import redis_conn

        log = (self.tmp / "worker.log").open("wb")
        self.pool = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        with self.app.app_context():
            deadline = time.monotonic() + 60
            while len(Worker.all(connection=redis_conn())) < GENERAL_WORKERS + 1:
                if time.monotonic() > deadline or self.pool.poll() is not None:
                    self.fail_with_log("the worker pool did not start")
                time.sleep(0.1)

    def fail_with_log(self, message: str) -> NoReturn:
        fail(f"{message}\n--- last lines of {self.tmp / 'worker.log'} (--keep keeps it) ---\n"
             f"{tail(self.tmp / 'worker.log')}")

    def sign_in(self, role: str) -> Any:
        """A browser of its own for `role`, signed in through /login."""
        client = self.app.test_client()
        page = checked(client.get("/login"), 200, "GET /login")
        form = form_on(page, having="password")
        checked(client.post("/login", data=multi(form.submit({"email": f"{role}@bench.uhl", "password": PASSWORD}))),
                302, f"sign-in as {role}")
        self.clients[role] = client
        return client

    # -- the two Sends -------------------------------------------------------------------------------

    def prepare_export(self) -> Callable[[], tuple[Any, str]]:
        """A requester's export request for SMITH, opened by AM radiology, the local PACS
        searched and the form filled: returns the Send (the timed POST)."""
        requester, amrad = self.clients["requester"], self.clients["am_radiology"]
        page = checked(requester.get("/requests/new/export"), 200, "GET /requests/new/export")
        form = form_on(page, having="s_number")
        answers = export_answers()
        response = requester.post("/requests/new/export", data=multi(form.submit(answers)))
        if response.status_code == 409:  # the same examination asked for before: say it is a new request
            response = requester.post("/requests/new/export",
                                      data=multi(form.submit({**answers, "confirm_duplicate": "y"})))
        checked(response, 302, "submitting the export request")
        match = re.search(r"/requests/(IEP-\d{4}-\d{6})", response.headers["Location"])
        if not match:
            fail(f"the export request's answer sends the browser to {response.headers['Location']}")
        call_ref = match.group(1)
        page = checked(amrad.get(f"/requests/{call_ref}"), 200, f"GET /requests/{call_ref}")
        search = form_on(page, action_ends="/pacs-search")
        node = option(search, "node_id", LOCAL_PACS)
        csrf = dict(search.fields)["csrf_token"]
        results = checked(amrad.post(search.action, data=multi(search.submit({"node_id": node})),
                                     headers={"HX-Request": "true", "HX-Target": "pacs-results", "X-CSRFToken": csrf}),
                          200, "searching the local PACS")
        send = form_on(results, action_ends="/transfers")
        data = send.submit({"dest_id": option(send, "dest_id", NUH_NAME), "report_text": REPORT,
                            "priority": "Standard"}, tick={"study_uid": self.sent_uids})
        if dict(data)["priority"] != "Standard":
            fail("the export's Send form does not say Standard")

        def press() -> tuple[Any, str]:
            payload: list[tuple[str, Any]] = [*data, ("report_pdf", (BytesIO(b""), ""))]  # no file chosen
            return amrad.post(send.action, data=multi(payload), content_type="multipart/form-data"), call_ref

        return press

    def prepare_trauma(self) -> Callable[[], tuple[Any, str]]:
        """The radiologist's /trauma up to the review step: find, confirm, tick the two
        studies and paste the report, check; returns the Send (the timed POST)."""
        client = self.clients["radiologist"]
        page = checked(client.get("/trauma"), 200, "GET /trauma")
        form = form_on(page, action_ends="/trauma")
        csrf = dict(form.fields)["csrf_token"]
        hx = {"HX-Request": "true", "HX-Target": "trauma-flow", "HX-Current-URL": "http://localhost/trauma",
              "X-CSRFToken": csrf}

        def step(form: Form, action: str, what: str, **kwargs: Any) -> Form:
            data = form.submit({**kwargs.pop("set_", {}), "action": action}, **kwargs)
            return form_on(checked(client.post("/trauma", data=multi(data), headers=hx), 200, what),
                           action_ends="/trauma")

        form = step(form, "find", "finding the patient", set_=SMITH)
        form = step(form, "confirm", "confirming the patient")
        if not set(self.sent_uids) <= set(form.boxes.get("study_uid", [])):
            fail("the trauma screen does not list CT HEAD and the CT CAP")
        form = step(form, "review", "checking the studies and the report", set_={"report_text": REPORT},
                    tick={"study_uid": self.sent_uids})
        # The one confirmation: the report's study (CT HEAD), the report checked, and, as
        # every run sends the same studies again within the day, "send them again".
        ticks = {"report_checked": form.boxes.get("report_checked", ["y"])[:1], "report_study": self.sent_uids[:1]}
        if "send_again" in form.boxes:
            ticks["send_again"] = form.boxes["send_again"][:1]
        data = form.submit({"action": "send"}, tick=ticks)

        def press() -> tuple[Any, str]:
            response = client.post("/trauma", data=multi(data), headers=hx)
            where = response.headers.get("HX-Redirect", "")
            match = re.search(r"/trauma/(IEP-\d{4}-\d{6})$", where)
            if response.status_code != 200 or not match:
                checked(response, 0, "Send to Nottingham now")  # fails, with the page's words
            return response, match.group(1) if match else ""

        return press

    # -- one run -------------------------------------------------------------------------------------

    def measure(self, case: str, prepare: Callable[[], Callable[[], tuple[Any, str]]], under_load: bool) -> Run:
        import sqlalchemy as sa

        from app.requests.models import Request
        from app.transfers.models import Direction, Transfer, TransferState

        press = prepare()
        load_before = self.wait_for_load() if under_load else self.check_idle()
        self.nuh.reset()
        wall = datetime.now(UTC)
        started = time.monotonic()
        response, call_ref = press()
        post = time.monotonic() - started
        if case.startswith("standard"):
            checked(response, 302, "Send and create transaction")
            if "#transfer-" not in response.headers.get("Location", ""):
                fail(f"the Send did not start a transfer: it sends the browser to {response.headers['Location']}")
        with self.db() as session:
            req = session.scalar(sa.select(Request).where(Request.call_ref == call_ref))
            transfer = session.scalar(sa.select(Transfer).where(Transfer.request_id == req.id,
                                                                Transfer.direction == Direction.OUTBOUND))
            if transfer is None:
                fail(f"{case}: {call_ref} has no outbound transfer after the Send")
            transfer_id = transfer.id
        deadline = time.monotonic() + self.args.timeout
        while not self.nuh.first.wait(0.25):
            with self.db() as session:
                t = session.get(Transfer, transfer_id)
                if t.state in (TransferState.FAILED, TransferState.CANCELLED) or t.last_error:
                    self.fail_with_log(f"{case}: transfer {transfer_id} {t.state} before NUH's first C-STORE: "
                                       f"{t.last_error}")
            if time.monotonic() > deadline:
                self.fail_with_log(f"{case}: no C-STORE at NUH within {self.args.timeout} s of the Send")
        load_at_store = self.load() if under_load else None
        first_store, _held, _errors = self.nuh.snapshot()
        assert first_store is not None
        worker, to_worker = self.wait_delivered(case, transfer_id, wall)
        return Run(case=case, seconds=first_store - started, post=post, to_worker=to_worker, call_ref=call_ref,
                   transfer_id=transfer_id, worker=worker, load_before=load_before,
                   load_at_store=load_at_store)

    def wait_delivered(self, case: str, transfer_id: int, wall: datetime) -> tuple[str, float]:
        """Until the transfer ends; then check it end to end. Returns the worker that ran
        it and the seconds from the Send to its start."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        from app.extensions import redis_conn
        from app.requests.statuses import Status
        from app.timeutil import aware
        from app.transfers.models import Transfer, TransferState

        deadline = time.monotonic() + self.args.timeout
        while True:
            with self.db() as session:
                t = session.get(Transfer, transfer_id)
                if t.state in (TransferState.DELIVERED, TransferState.FAILED, TransferState.CANCELLED):
                    state, attempts, error = t.state, t.attempts, t.last_error
                    total, confirmed = t.instances_total, t.instances_confirmed
                    status = t.request.status if t.request else None
                    started_at, job_id = aware(t.started_at) if t.started_at else None, t.job_id
                    break
            if time.monotonic() > deadline:
                self.fail_with_log(f"{case}: transfer {transfer_id} not finished {self.args.timeout} s after the Send")
            time.sleep(0.1)
        _first, held, errors = self.nuh.snapshot()
        want = len(self.expected) + 1
        report = {sop for sop, h in held.items() if sop not in self.expected}
        problems = []
        if state != TransferState.DELIVERED:
            problems.append(f"transfer {transfer_id} ended {state}: {error}")
        if attempts != 1:
            problems.append(f"{attempts} attempts (a retry is not the same measurement)")
        if (total, confirmed) != (want, want):
            problems.append(f"{confirmed} of {total} instances confirmed, expected {want} of {want}")
        if not self.expected <= set(held) or [held[sop].sop_class for sop in report] != [ENCAPSULATED_PDF]:
            problems.append(f"NUH holds {len(set(held) & self.expected)} of the {len(self.expected)} instances and "
                            f"{len(report)} other(s); expected all of them and the report PDF alone besides")
        if status != Status.DELIVERED:
            problems.append(f"the request is {status}, not Delivered")
        if errors:
            problems.append("NUH's handlers: " + "; ".join(errors[:3]))
        if started_at is None:
            problems.append("the transfer has no started_at")
        if problems:
            self.fail_with_log(f"{case}: " + "; ".join(problems))
        with self.db(), contextlib.suppress(NoSuchJobError):
            worker = "?"
            worker = Job.fetch(job_id, connection=redis_conn()).worker_name or "?"
        lane = re.search(r"\.lane(\d)\.", worker)
        name = {"0": "Blue Light worker", "1": "general worker"}.get(lane.group(1), worker) if lane else worker
        return name, (started_at - wall).total_seconds()

    # -- the load ------------------------------------------------------------------------------------------

    def load(self) -> Load:
        import sqlalchemy as sa
        from rq import Queue, Worker

        from app.extensions import redis_conn
        from app.transfers.models import Transfer, TransferState

        with self.db() as session:
            states = dict(session.execute(
                sa.select(Transfer.state, sa.func.count(Transfer.id)).where(Transfer.dest_node_id == self.slow_id)
                .group_by(Transfer.state)).tuples().all())
            conn = redis_conn()
            workers = Worker.all(connection=conn)
            general = [w for w in workers if ".lane1." in w.name]
            blue = [w for w in workers if ".lane0." in w.name]
            jobs = Queue("outbound", connection=conn).get_job_ids()
            return Load(running=states.get(TransferState.RUNNING, 0) + states.get(TransferState.VERIFYING, 0),
                        general_busy=sum(w.get_state() == "busy" for w in general),
                        waiting=states.get(TransferState.QUEUED, 0), jobs=len(jobs),
                        queued_transfers=len({m.group(1) for j in jobs if (m := re.match(r"transfer-(\d+)-", j))}),
                        bluelight_idle=bool(blue) and all(w.get_state() != "busy" for w in blue),
                        bluelight_jobs=Queue("outbound-bluelight", connection=conn).count)

    def check_idle(self) -> Load:
        """Nothing runs and nothing waits: the idle cases' condition (checked, not assumed)."""
        deadline = time.monotonic() + 30
        while True:
            now = self.load()
            busy = (now.running, now.general_busy, now.waiting, now.jobs, now.bluelight_jobs)
            if busy == (0, 0, 0, 0, 0) and now.bluelight_idle:
                return now
            if time.monotonic() > deadline:
                self.fail_with_log(f"the pool is not idle before an idle-pool run: {now}")
            time.sleep(0.1)

    def make_load(self, count: int) -> None:
        """`count` standard exports of the load study to the slow PACS, queued on `outbound`
        one by one as the desk's Send does: row committed, then `service.enqueue`. (All rows
        first, then the enqueues, while the pool runs, leaves them jobless long enough for
        the pool's dispatcher to queue them too, and some get two jobs: see bench/README.md.)"""
        from app.requests.statuses import Priority
        from app.transfers import service
        from app.transfers.models import DicomNode, Direction

        with self.db() as session:
            for _ in range(count):
                source, dest = session.get(DicomNode, self.pacs_id), session.get(DicomNode, self.slow_id)
                transfer = service.create_transfer(request=None, direction=Direction.OUTBOUND,
                                                   priority=Priority.STANDARD, source=source, dest=dest,
                                                   study_uids=[self.load_uid], user_id=None)
                session.commit()
                if not service.enqueue(transfer, seen_job_id=""):  # None: the pool's dispatcher claimed it first
                    session.refresh(transfer)
                    if not transfer.job_id:
                        fail(f"load export {transfer.id} was not queued")

    def wait_for_load(self) -> Load:
        """Top the `outbound` queue up to --backlog, then wait (at most LOAD_CHECK_SECONDS)
        for four load transfers running on the four busy general workers; abort if not."""
        now = self.load()
        if now.waiting < self.args.backlog:
            self.make_load(self.args.backlog - now.waiting)
        deadline = time.monotonic() + LOAD_CHECK_SECONDS
        while True:
            now = self.load()
            if (now.running >= GENERAL_WORKERS and now.general_busy == GENERAL_WORKERS
                    and now.waiting >= self.args.backlog and now.queued_transfers >= self.args.backlog
                    and now.bluelight_idle and now.bluelight_jobs == 0):
                return now
            if time.monotonic() > deadline:
                self.fail_with_log(f"ABORTED: the full queue is not there before the trauma Send: {now} (wanted "
                                   f"{GENERAL_WORKERS} running on {GENERAL_WORKERS} busy general workers, "
                                   f">= {self.args.backlog} waiting with a job each on `outbound`, the Blue "
                                   "Light worker idle with nothing on its queue)")
            time.sleep(0.05)

    def time_load(self) -> list[float]:
        """Seconds each of the first GENERAL_WORKERS load exports took, start to end, once
        they have ended (waited for, at most --timeout); each must end Delivered."""
        import sqlalchemy as sa

        from app.timeutil import aware
        from app.transfers.models import Transfer, TransferState

        deadline = time.monotonic() + self.args.timeout
        while True:
            with self.db() as session:
                rows = session.execute(
                    sa.select(Transfer.started_at, Transfer.finished_at, Transfer.state, Transfer.last_error)
                    .where(Transfer.dest_node_id == self.slow_id, Transfer.finished_at.is_not(None))
                    .order_by(Transfer.finished_at).limit(GENERAL_WORKERS)).all()
            if len(rows) == GENERAL_WORKERS:
                break
            if time.monotonic() > deadline:
                self.fail_with_log(f"only {len(rows)} load exports ended within {self.args.timeout} s")
            time.sleep(0.5)
        bad = [f"{state}: {error}" for _start, _end, state, error in rows if state != TransferState.DELIVERED]
        if bad:
            self.fail_with_log("load exports did not end Delivered: " + "; ".join(bad))
        return [(aware(end) - aware(start)).total_seconds() for start, end, _state, _error in rows]

    # -- tear-down -----------------------------------------------------------------------------------------

    def close(self) -> None:
        if self.pool is not None and self.pool.poll() is None:
            kill_family(self.pool)
        self.nuh.stop()
        for peer in self.orthancs:  # Orthanc takes seconds to stop: ask all, then wait for each
            if peer.proc.poll() is None:
                peer.proc.terminate()
        for peer in self.orthancs:
            stop(peer.proc)
        if self.app is not None:
            with contextlib.suppress(Exception), self.app.app_context():
                from app.extensions import db

                db.engine.dispose()
        if self.postgres is not None:
            import sqlalchemy as sa

            admin, name = self.postgres
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        if self.redis_pid_file is not None and self.redis_pid_file.exists():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self.redis_pid_file.read_text().strip()), signal.SIGTERM)


def scu_node(peer: Orthanc):  # noqa: ANN201
    from app.dicom.ae import Node

    return Node(peer.name, "127.0.0.1", peer.port)


def kill_family(pool: subprocess.Popen) -> None:
    """SIGKILL the pool's supervisor and every descendant, each by its pid (RQ's
    work-horses run in sessions of their own; the load's jobs are thrown away)."""
    import psutil

    try:
        family = [psutil.Process(pool.pid), *psutil.Process(pool.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    pool.wait(timeout=30)
    psutil.wait_procs(family, timeout=10)


def option(form: Form, name: str, label_starts: str) -> str:
    for value, label in form.options.get(name, []):
        if label.startswith(label_starts):
            return value
    fail(f"the form at {form.action} has no {name} option {label_starts!r}")


def multi(pairs: list[tuple[str, Any]]) -> Any:
    from werkzeug.datastructures import MultiDict

    return MultiDict(pairs)


def export_answers() -> dict[str, str]:
    """The export form as a requester fills it in for SMITH (tests/forms_data.py's valid export)."""
    from datetime import timedelta

    from app.timeutil import local_today

    return {
        "s_number": "S1234567", "nhs_number": "999 000 0018", "family_name": "Smith", "given_name": "Margaret",
        "dob": "1948-03-14", "gender": "Female", "address_line1": "12 Welford Road", "address_line2": "",
        "town": "Leicester", "county": "Leicestershire", "postcode": "LE2 7AA", "contact_name": "Dr Priya Shah",
        "contact_phone": "0116 258 4000", "contact_email": "priya.shah@uhl-tr.nhs.uk", "comments": "",
        "exams-0-exam_date": "2026-12-03", "exams-0-description": "CT head", "exams-0-exam_code": "CHEAD",
        "action": "submit", "institution_name": NUH_INSTITUTION, "site_contact_name": "Dr Jane Rowe",
        "site_contact_position": "Consultant Radiologist", "site_contact_phone": "0115 924 9924",
        "site_contact_email": "jane.rowe@nuh.nhs.uk", "priority": "Standard", "priority_reason": "MDT Referral",
        "required_by": (local_today() + timedelta(days=7)).isoformat(),
    }


# --- the report -------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, runs: dict[str, list[Run]], expected: int, load_seconds: list[float],
           last: Load) -> None:
    base = median_run(runs[BASELINE])
    print()
    print(f"Send to NUH's first C-STORE (2 studies, {expected} instances of {args.matrix} x {args.matrix} "
          f"+ the report PDF), median of {args.runs} run(s); the pool: 1 Blue Light worker + "
          f"{GENERAL_WORKERS} general outbound workers")
    print(f"{'case':<44} {'median s':>9} {'vs baseline':>12} {'POST s':>8} {'to worker s':>12} "
          f"{'then to C-STORE s':>18}  ran on")
    for case in CASES:
        run = median_run(runs[case])
        label = f"{case} [baseline]" if case == BASELINE else case
        print(f"{label:<44} {run.seconds:>9.2f} {run.seconds / base.seconds:>11.2f}x {run.post:>8.3f} "
              f"{run.to_worker:>12.2f} {run.seconds - run.to_worker:>18.2f}  {run.worker}")
    for case in CASES:
        print(f"  all {case} runs (s): " + ", ".join(f"{r.seconds:.2f}" for r in runs[case]))
    trauma = median_run(runs[UNDER_LOAD])
    print(f"RATIO trauma under full queue / standard export, idle pool: {trauma.seconds:.2f} s / "
          f"{base.seconds:.2f} s = {trauma.seconds / base.seconds:.2f}")
    print("load at each trauma Send (checked; the run aborts without it) -> at NUH's first C-STORE (read):")
    for n, run in enumerate(runs[UNDER_LOAD], 1):
        print(f"  run {n}: {run.load_before} -> {run.load_at_store}")
    position = last.waiting + 1
    each = statistics.median(load_seconds)
    rounds = -(-position // GENERAL_WORKERS)
    print(f"a standard export pressed at the last trauma Send would have been number {position} in line for "
          f"{GENERAL_WORKERS} general workers ({last.waiting} waiting, {last.running} running); one load export took "
          f"{each:.1f} s (median of the first {len(load_seconds)} to finish: "
          + ", ".join(f"{x:.1f}" for x in load_seconds) + f"), so it would have waited about {rounds} x {each:.1f} s "
          f"= {rounds * each / 60:.0f} min for a worker (not waited for)")


BASELINE = "standard export, idle pool"
IDLE_TRAUMA = "trauma, idle pool (reference)"
UNDER_LOAD = "trauma, full queue"
CASES = (BASELINE, IDLE_TRAUMA, UNDER_LOAD)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case; the median counts (default 5)")
    parser.add_argument("--backlog", type=int, default=300,
                        help="standard exports waiting on `outbound` at each trauma Send (default 300)")
    parser.add_argument("--matrix", type=int, default=512,
                        help="rows = columns of SMITH's CT instances (default 512: 0.5 MB an instance)")
    parser.add_argument("--load-instances", type=int, default=400,
                        help="instances (64 x 64) in each load export to the slow PACS (default 400)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a run may take before it fails")
    parser.add_argument("--postgres-url", default="",
                        help="run on a scratch database created (and dropped) on this PostgreSQL server, "
                             "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test; default: a SQLite file")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the scratch folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, database, peers)")
    args = parser.parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the C-ECHO waits for Orthanc are expected to fail
    if args.runs < 1 or args.backlog < 1:
        fail("--runs and --backlog must be at least 1")
    if not os.access(ORTHANC, os.X_OK):
        fail(f"{ORTHANC} is missing: install the Debian package orthanc (scripts/setup does)")

    tmp = Path(tempfile.mkdtemp(prefix="iep-bench-trauma-", dir=args.tmp_dir))
    bench = Bench(args, tmp)
    try:
        bench.setup()
        bench.start_pool()
        for role in ("requester", "am_radiology", "radiologist"):
            bench.sign_in(role)
        runs: dict[str, list[Run]] = {case: [] for case in CASES}

        def one(case: str, prepare: Callable[[], Callable[[], tuple[Any, str]]], load: bool, label: str) -> Run:
            run = bench.measure(case, prepare, under_load=load)
            print(f"  {label:<34} {run.seconds:6.2f} s to the first C-STORE (POST {run.post:.3f} s, worker "
                  f"started at {run.to_worker:.2f} s; {run.call_ref}, {run.worker})", flush=True)
            return run

        print("warm-up (not counted):", flush=True)
        one(BASELINE, bench.prepare_export, False, BASELINE)
        one(IDLE_TRAUMA, bench.prepare_trauma, False, IDLE_TRAUMA)
        for n in range(1, args.runs + 1):
            print(f"idle pool, round {n} of {args.runs}:", flush=True)
            runs[BASELINE].append(one(BASELINE, bench.prepare_export, False, BASELINE))
            runs[IDLE_TRAUMA].append(one(IDLE_TRAUMA, bench.prepare_trauma, False, IDLE_TRAUMA))
        print(f"the load: {GENERAL_WORKERS} + {args.backlog} standard exports of {args.load_instances} instances "
              "to the slow PACS ...", flush=True)
        bench.make_load(GENERAL_WORKERS + args.backlog)
        for n in range(1, args.runs + 1):
            run = one(UNDER_LOAD, bench.prepare_trauma, True, f"{UNDER_LOAD}, run {n} of {args.runs}")
            print(f"    load at the Send: {run.load_before}; at the first C-STORE: {run.load_at_store}", flush=True)
            runs[UNDER_LOAD].append(run)
        last = runs[UNDER_LOAD][-1].load_before
        assert last is not None
        print(f"timing the load: waiting for the first {GENERAL_WORKERS} load exports to end ...", flush=True)
        report(args, runs, len(bench.expected), bench.time_load(), last)
    finally:
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
