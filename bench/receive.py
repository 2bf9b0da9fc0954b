"""Receiving a CT study: the desk's gateway and C-GET against DCMTK, alone and end to end.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/receive.py [--only gateway|retrieve|e2e|memory] [--timed-instances 600]
                                      [--instances 1000] [--small 200] [--repeat 1]
                                      [--tmp-dir /tmp] [--keep]

Issue 15, part 2: each receiving path of the desk against DCMTK doing the same work in the
same run, over loopback, on generated CT studies (512 x 512 x 16 bit, about 0.53 MB an
instance, 4 series; `app.dicom.synth.make_study`). The desk is measured through its public
interfaces and real processes only (`python worker.py`, `GatewaySCP`, `retrieve_study`,
the transfer service), so the bench measures whatever implementation is on the branch.
One scratch desk serves every part: a SQLite file migrated with `flask_migrate.upgrade`,
an embedded Redis, IEP_DATA_DIR in the temporary folder, the gateway on a free port
(GATEWAY_AE_TITLE IEPDESK) and ARRIVAL_QUIET_SECONDS=0. The peers: DCMTK storescu,
storescp and getscu with TCP_NODELAY=1 and a 128 KB PDU (the desk's own MAX_PDU, so both
sides of every hop have the same), and two Orthancs of the bench's own (the local PACS
"UHLPACSWFM01" and a remote PACS), tuned as tests/dicom_peers.py tunes them.

1. **gateway** (--timed-instances, default 600): DCMTK storescu pushing the study over one
   association into (a) the desk's gateway as production runs it, a `python worker.py`
   pool with only the gateway (IEP_WORKERS="", IEP_CRON=0, IEP_DISPATCHER=0), each
   arrival recorded in the database; (b) DCMTK storescp --bit-preserving, the baseline;
   (c) for reference, the `GatewaySCP` class in the bench process without the database.
   Wall time of storescu. Checked: every instance is in the receiver's folder (and, for
   the gateway, the study's arrival row counts them all and nothing was quarantined).
2. **retrieve**: the study on the local PACS Orthanc, fetched whole by (a) the desk's C-GET,
   `retrieve_study(..., method="get")` with the desk's AE settings, in a fresh interpreter
   (the time of the call); (b) DCMTK getscu --bit-preserving, the baseline (wall time).
   Checked: every instance on disk and, for the desk, a successful final status.
3. **e2e**: a pool with the gateway, the dispatcher and one worker each on `outbound` and
   `inbound` (IEP_CRON=0). (a) An export, local PACS -> remote Orthanc: a transfer made
   with `service.create_transfer` and queued with `service.enqueue`, as a Send does; the
   engine lists the study (C-FIND), retrieves it (C-GET), sends it and verifies it (C-FIND
   at the remote); seconds from before `create_transfer` to the transfer's `finished_at`,
   Delivered. Baseline: getscu from the PACS, then storescu of those files to the remote.
   (b) An import, remote -> gateway -> local PACS: a new import request for the register's
   patient each run (a new study each round), storescu pushes the study to the gateway,
   which records and matches it; as soon as the arrival is complete (the sender released,
   every instance recorded) the bench presses "Download to PACS" as the route does
   (`plan_download`, `start_download`, commit, `enqueue`); the engine fixes the headers
   up, sends, verifies, records the RIS entry; seconds from storescu's start to
   `finished_at`, Delivered, the request Delivered. Baseline: storescu -> storescp, then
   storescu of storescp's files to the PACS. Checked after every run, desk and DCMTK
   alike: the destination Orthanc holds every instance (REST /studies/<id>/instances);
   the study is then deleted there.
4. **memory**: the peak RSS of the receiving process at --small and --instances: the
   gateway process of a fresh gateway-only pool while storescu pushes the study (first
   --small files, then all), and the interpreter running the desk's C-GET of a --small and
   an --instances study from the PACS. The peak is the kernel's VmHWM, reset to the
   present RSS just before the receive (`clear_refs`), so that the start-up's own peak
   (importing the app) cannot hide what the receive costs.

Bars (the issue's): every receive path (1a, 2a) and each end-to-end case at least 0.5 x
DCMTK's MB/s (so at most twice its seconds); peak RSS at --instances within 10 % of that
at --small. A run that loses an instance is a FAIL of its part, never a figure. Exit
status 0 when every bar of the parts run passes, 1 if a bar fails, 2 if a check failed.
MB are 10^6 bytes. Every process is stopped by its pid, every scratch file deleted (unless
--keep), also on a failure or Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's
from bench.support import (  # noqa: E402 - after the repository is on sys.path
    Orthanc,
    free_port,
    reset_peak,
    start_orthanc,
    stop_family,
    stop_process,
    tail,
    vm_hwm,
    wait_for_echo,
)

MB = 1_000_000
PDU = 131072  # DCMTK's largest --max-pdu; the desk's MAX_PDU (app.dicom.ae) is the same 128 KiB
OUR_AE = "IEPDESK"
STORESCP_AE = "STORESCP"
SENDER_AE = "LEEDSPACS"  # storescu as the other hospital's PACS
PACS_AE, PACS_NAME = "UHLPACS", "UHLPACSWFM01"  # LOCAL_PACS_NODE's default name
REMOTE_AE, REMOTE_NAME = "REMOTEPACS", "Bench remote PACS"
BAR_VS_DCMTK = 0.5
BAR_RSS_GROWTH = 0.10
PARTS = ("gateway", "retrieve", "e2e", "memory")
PASSWORD = "correct-horse-9"  # noqa: S105 - the throwaway bench users' password
# The register's patient the import study is for; the sender's own Patient ID differs,
# so the import's header fix-up really rewrites every instance.
SMITH = {"s_number": "S1234567", "nhs_number": "9990000018", "family_name": "SMITH", "given_name": "Margaret",
         "dob": date(1948, 3, 14)}
POLL = 0.02  # seconds between database looks while waiting for a state


class CheckFailed(Exception):
    """A run did not do what it claims (an instance lost, a transfer not Delivered): its
    part is a FAIL and the bench exits 2; the other parts still run."""


def fail(message: str) -> NoReturn:
    print(f"receive bench: {message}", file=sys.stderr)
    sys.exit(2)


def nodelay_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []


def empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


# --- the desk's C-GET, in an interpreter of its own ------------------------------------------------


def retrieve_child() -> None:
    """Run by `python -c` in a fresh interpreter with the pool's environment: one C-GET of a
    study with the desk's AE settings, as the engine calls it; prints JSON with the time of
    the call, the result and the process's peak RSS during the call (the kernel's VmHWM,
    reset just before it) and its RSS then."""
    port, study_uid, dest = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from app import create_app
    from app.dicom.ae import Node
    from app.dicom.scu import retrieve_study
    from app.transfers import service

    app = create_app()
    with app.app_context():
        config = service.ae_config()
    reset_peak()  # the peak that counts is the C-GET's, not create_app's
    at_rest = vm_hwm("self")
    started = time.perf_counter()
    result = retrieve_study(Node(PACS_AE, "127.0.0.1", port), study_uid, dest, method="get", config=config)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "ok": result.ok, "files": len(result.files),
                      "bytes": result.bytes_received, "outcome": result.plain_outcome(),
                      "peak_rss": vm_hwm("self"), "at_rest": at_rest}))


# --- figures -------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    instances: int
    nbytes: int
    seconds: float
    peak_rss: int = 0
    at_rest: int = 0  # the same process's peak before it received anything
    split: str = ""  # where the time went, in words

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


@dataclass
class Study:
    uid: str
    files: list[Path]

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass
class Case:
    """One comparison: the desk's runs against DCMTK's, with or without a bar."""

    part: str
    title: str
    desk: list[Run] = field(default_factory=list)
    dcmtk: list[Run] = field(default_factory=list)
    reference: list[Run] = field(default_factory=list)
    barred: bool = True


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    app: Any = None
    env: dict[str, str] = field(default_factory=dict)
    redis_pid_file: Path | None = None
    gateway_port: int = 0
    data: Path = Path()
    pools: list[subprocess.Popen] = field(default_factory=list)
    storescp: subprocess.Popen | None = None
    storescp_port: int = 0
    received: Path = Path()
    pacs: Orthanc | None = None
    remote: Orthanc | None = None
    studies: dict[str, Study] = field(default_factory=dict)
    on_pacs: set[str] = field(default_factory=set)
    requester_id: int = 0
    analyst_id: int = 0

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """An app context for the bench's own reads and writes, its session removed after."""
        from app.extensions import db

        with self.app.app_context():
            try:
                yield db.session
            finally:
                db.session.remove()

    # -- set-up ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        from flask_migrate import upgrade
        from sqlalchemy.exc import SAWarning

        from app import create_app
        from app.config import Settings
        from app.embedded_redis import ensure_embedded_redis
        from app.extensions import db

        instance = self.tmp / "instance"
        instance.mkdir()
        self.data = self.tmp / "data"
        redis_url = ensure_embedded_redis(self.tmp)
        self.redis_pid_file = self.tmp / "redis" / "redis.pid"
        database_url = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        secret = "bench-" + uuid.uuid4().hex
        self.gateway_port = free_port()
        settings = Settings(instance_path=instance, database_url=database_url, redis_url=redis_url,
                            secret_key=secret, data_dir=self.data, gateway_ae_title=OUR_AE,
                            gateway_port=self.gateway_port, arrival_quiet_seconds=0)
        self.env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": secret,
                    "IEP_DATA_DIR": str(self.data), "GATEWAY_AE_TITLE": OUR_AE,
                    "GATEWAY_PORT": str(self.gateway_port), "GATEWAY_BIND": "127.0.0.1",
                    "ARRIVAL_QUIET_SECONDS": "0", "IEP_CRON": "0", "PYTHONUNBUFFERED": "1"}
        self.env.pop("TCP_NODELAY", None)  # the desk sets TCP_NODELAY on its own sockets
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

    def make_people(self) -> None:
        from app.auth.models import Role, User
        from app.patients.models import Patient

        with self.db() as session:
            session.add(Patient(s_number=SMITH["s_number"], nhs_number=SMITH["nhs_number"],
                                family_name=SMITH["family_name"], given_name=SMITH["given_name"], dob=SMITH["dob"],
                                gender="Female", address_line1="12 Welford Road", town="Leicester",
                                postcode="LE2 7AA"))
            users = []
            for role in (Role.REQUESTER, Role.ANALYST):
                user = User(email=f"{role.value}@bench.uhl", name=f"Bench {role.label}", role=role, phone="x18000",
                            department="Radiology")
                user.set_password(PASSWORD)
                session.add(user)
                users.append(user)
            session.commit()
            self.requester_id, self.analyst_id = (u.id for u in users)

    def study(self, name: str, n: int, **patient: str) -> Study:
        """A generated CT study of `n` instances (made once per name)."""
        from pydicom import dcmread

        from app.dicom.synth import make_study

        if name in self.studies:
            return self.studies[name]
        folder = self.tmp / "studies" / name
        per_series = -(-n // 4)
        started = time.perf_counter()
        details: dict[str, Any] = {
            "patient_id": "S9999999", "patient_name": "BENCH^RECEIVE", "birth_date": "19700101",
            "study_date": "20261206", "accession": f"BENCH{len(self.studies) + 1}", "description": f"BENCH CT {n}",
            **patient}
        paths = make_study(folder, n_series=4, n_per_series=per_series, rows=512, cols=512, **details)
        for extra in paths[n:]:
            extra.unlink()
        made = Study(str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths[:n])
        self.studies[name] = made
        print(f"  generated study {name!r}: {n} instances, {made.nbytes / MB:.1f} MB in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        return made

    def start_storescp(self) -> None:
        if self.storescp is not None:
            return
        self.received = self.tmp / "storescp"
        self.received.mkdir()
        self.storescp_port = free_port()
        log = self.tmp / "storescp.log"
        with log.open("wb") as out:
            self.storescp = subprocess.Popen(
                ["storescp", "--aetitle", STORESCP_AE, "--output-directory", str(self.received), "--max-pdu",
                 str(PDU), "--bit-preserving", str(self.storescp_port)],
                env=nodelay_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_echo(STORESCP_AE, self.storescp_port, self.storescp, log)

    def start_orthancs(self, remote: bool) -> None:
        """The local PACS (and the remote PACS): both know the desk (C-GET, C-FIND, and the
        gateway as a C-MOVE destination)."""
        from app.transfers.nodes import upsert_node

        desk = {"desk": (OUR_AE, "127.0.0.1", self.gateway_port)}
        if self.pacs is None:
            self.pacs = start_orthanc(self.tmp / "pacs", PACS_AE, desk)
        if remote and self.remote is None:
            self.remote = start_orthanc(self.tmp / "remote", REMOTE_AE, desk)
        with self.db() as session:
            upsert_node(PACS_NAME, PACS_AE, "127.0.0.1", self.pacs.port, "local_pacs")
            if self.remote is not None:
                upsert_node(REMOTE_NAME, REMOTE_AE, "127.0.0.1", self.remote.port, "remote")
            session.commit()

    def put_on_pacs(self, study: Study) -> None:
        """Store a study on the local PACS (DCMTK storescu), once; checked by REST."""
        assert self.pacs is not None
        if study.uid in self.on_pacs:
            return
        self.storescu(study.files, PACS_AE, self.pacs.port)
        if (held := self.pacs.count(study.uid)) != len(study.files):
            fail(f"the local PACS holds {held} of the {len(study.files)} instances stored on it")
        self.on_pacs.add(study.uid)

    def start_pool(self, lanes: str, *, gateway: bool, dispatcher: bool) -> subprocess.Popen:
        """`python worker.py` with these lanes; returns once its RQ workers are registered
        and its gateway answers a C-ECHO."""
        from rq import Worker

        from app.extensions import redis_conn
        from worker import parse_lanes

        env = {**self.env, "IEP_WORKERS": lanes, "IEP_GATEWAY": "1" if gateway else "0",
               "IEP_DISPATCHER": "1" if dispatcher else "0"}
        log = self.tmp / f"worker-{len(self.pools) + 1}.log"
        with log.open("wb") as out:
            pool = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pools.append(pool)
        wanted = sum(count for _queues, count in parse_lanes(lanes))
        with self.app.app_context():
            deadline = time.monotonic() + 60
            while len(Worker.all(connection=redis_conn())) < wanted:
                if time.monotonic() > deadline or pool.poll() is not None:
                    fail(f"the worker pool did not start:\n{tail(log)}")
                time.sleep(0.1)
        if gateway:
            try:
                wait_for_echo(OUR_AE, self.gateway_port, pool, log, seconds=60)
            except RuntimeError as exc:
                fail(f"the pool's gateway: {exc}")
        return pool

    def stop_pool(self, pool: subprocess.Popen) -> None:
        stop_family(pool)
        self.pools.remove(pool)

    # -- DCMTK --------------------------------------------------------------------------------------

    def storescu(self, files: list[Path], called: str, port: int, calling: str = SENDER_AE) -> float:
        """DCMTK storescu (TCP_NODELAY=1, one association): its wall time."""
        os.sync()  # nothing written earlier is flushed during the timed run
        started = time.perf_counter()
        done = subprocess.run(
            ["storescu", "--aetitle", calling, "--call", called, "--max-pdu", str(PDU), "--no-halt", "127.0.0.1",
             str(port), *map(str, files)],
            check=False, env=nodelay_env(), capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise CheckFailed(f"storescu to {called} failed ({done.returncode}): {done.stderr[-500:]}")
        return seconds

    def getscu(self, study_uid: str, into: Path) -> float:
        """DCMTK getscu of a whole study from the local PACS, as the desk (IEPDESK), writing
        each instance straight to disk (--bit-preserving): its wall time."""
        assert self.pacs is not None
        empty(into)
        os.sync()
        started = time.perf_counter()
        done = subprocess.run(
            ["getscu", "--study", "--aetitle", OUR_AE, "--call", PACS_AE, "--max-pdu", str(PDU), "--bit-preserving",
             "--output-directory", str(into), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
             "127.0.0.1", str(self.pacs.port)],
            check=False, env=nodelay_env(), capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise CheckFailed(f"getscu failed ({done.returncode}): {done.stderr[-500:]}")
        return seconds

    def storescp_holds(self, expected: int, who: str) -> list[Path]:
        """storescp must hold every instance (it may still be closing the last file)."""
        deadline = time.monotonic() + 10
        while len(found := files_in(self.received)) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(found) != expected:
            raise CheckFailed(f"{who}: storescp holds {len(found)} of {expected} instances")
        return found

    # -- the desk ----------------------------------------------------------------------------------------

    def desk_cget(self, study_uid: str, into: Path) -> dict[str, Any]:
        """The desk's C-GET in a fresh interpreter (`retrieve_child`)."""
        assert self.pacs is not None
        empty(into)
        os.sync()
        done = subprocess.run(
            [sys.executable, "-c", "import bench.receive as r; r.retrieve_child()", str(self.pacs.port), study_uid,
             str(into)],
            check=False, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise CheckFailed(f"the desk's C-GET process failed ({done.returncode}): {done.stderr[-1500:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def check_cget(self, answer: dict[str, Any], into: Path, expected: int) -> None:
        on_disk = [p for p in files_in(into) if "quarantine" not in p.parts]
        quarantined = files_in(into / "quarantine")
        if not answer["ok"] or answer["files"] != expected or len(on_disk) != expected or quarantined:
            raise CheckFailed(f"the desk's C-GET: {answer['files']} of {expected} instances reported, {len(on_disk)} "
                              f"on disk, {len(quarantined)} file(s) in quarantine; {answer['outcome']}")

    def gateway_holds(self, study: Study, since: datetime) -> None:
        """Every instance in the gateway's store, the arrival row counting them all, the
        sender's release recorded, nothing quarantined."""
        import sqlalchemy as sa

        from app.timeutil import aware
        from app.transfers.models import InboundStudy
        from app.transfers.quarantine import QuarantinedFile

        expected = len(study.files)
        deadline = time.monotonic() + 10  # the release is recorded when the connection closes
        while True:
            with self.db() as session:
                row = session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study.uid))
                recorded = (row.instances, row.sender_done_at, row.sender_released) if row else (0, None, False)
                quarantined = session.scalar(sa.select(sa.func.count(QuarantinedFile.id))) or 0
            done_at = recorded[1]
            if recorded[0] == expected and done_at is not None and aware(done_at) >= since:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        stored = files_in(self.data / "gateway" / "store" / study.uid)
        problems = []
        if len(stored) != expected:
            problems.append(f"{len(stored)} of {expected} instances in the gateway's store")
        if recorded[0] != expected:
            problems.append(f"the arrival row counts {recorded[0]} of {expected}")
        if done_at is None or aware(done_at) < since or not recorded[2]:
            problems.append("the sender's release was not recorded")
        if quarantined or files_in(self.data / "gateway" / "quarantine"):
            problems.append(f"{quarantined} instance(s) quarantined")
        if problems:
            raise CheckFailed("gateway: " + "; ".join(problems))

    def inprocess_gateway(self, study: Study) -> float:
        """For reference: the GatewaySCP class in this process, no database (no on_stored)."""
        from app.dicom.scp import GatewaySCP
        from app.transfers import service

        with self.app.app_context():
            config = service.ae_config()
        store, quarantine = self.tmp / "inprocess" / "store", self.tmp / "inprocess" / "quarantine"
        scp = GatewaySCP(ae_title=OUR_AE, port=0, storage_dir=store, quarantine_dir=quarantine, config=config)
        scp.start()
        try:
            seconds = self.storescu(study.files, OUR_AE, scp.port)
        finally:
            scp.stop()
        found = files_in(store / study.uid)
        if len(found) != len(study.files) or files_in(quarantine):
            raise CheckFailed(f"GatewaySCP in process: {len(found)} of {len(study.files)} instances stored, "
                              f"{len(files_in(quarantine))} quarantined file(s)")
        shutil.rmtree(self.tmp / "inprocess")
        return seconds

    def wait_transfer(self, transfer_id: int, what: str) -> Any:  # noqa: ANN401 - a detached Transfer
        """Until the transfer ends (at most --timeout); CheckFailed unless Delivered on its
        first attempt with every instance confirmed. Returns the row (detached)."""
        from app.transfers.models import Transfer, TransferState

        deadline = time.monotonic() + self.args.timeout
        while True:
            with self.db() as session:
                t = session.get(Transfer, transfer_id)
                retrying = t.state == TransferState.QUEUED and t.attempts >= 1  # its first run failed
                if retrying or t.state in (TransferState.DELIVERED, TransferState.FAILED, TransferState.CANCELLED,
                                           TransferState.WAITING_CONFIRMATION):
                    session.expunge(t)
                    break
            if time.monotonic() > deadline:
                raise CheckFailed(f"{what}: transfer {transfer_id} not finished after {self.args.timeout:g} s")
            time.sleep(POLL)
        if t.state != TransferState.DELIVERED or t.attempts != 1 or t.instances_confirmed != t.instances_total:
            raise CheckFailed(f"{what}: transfer {transfer_id} {t.state} after {t.attempts} attempt(s), "
                              f"{t.instances_confirmed} of {t.instances_total} confirmed: {t.last_error}")
        return t

    def desk_export(self, study: Study) -> Run:
        """An export PACS -> remote through the pool, start to Delivered."""
        import sqlalchemy as sa

        from app.requests.statuses import Priority
        from app.timeutil import aware
        from app.transfers import service
        from app.transfers.models import DicomNode, Direction

        assert self.remote is not None
        n = len(study.files)
        os.sync()
        wall = datetime.now(UTC)
        with self.db() as session:
            pacs = session.scalar(sa.select(DicomNode).where(DicomNode.name == PACS_NAME))
            remote = session.scalar(sa.select(DicomNode).where(DicomNode.name == REMOTE_NAME))
            transfer = service.create_transfer(request=None, direction=Direction.OUTBOUND,
                                               priority=Priority.STANDARD, source=pacs, dest=remote,
                                               study_uids=[study.uid], user_id=self.analyst_id)
            session.commit()
            queue_it(session, transfer)
            transfer_id = transfer.id
        t = self.wait_transfer(transfer_id, "desk export")
        seconds = (aware(t.finished_at) - wall).total_seconds()
        to_start = (aware(t.started_at) - wall).total_seconds()
        self.remote_holds(study, "desk export")
        return Run("desk export", n, study.nbytes, seconds,
                   split=f"queued to started {to_start:.2f} s, then {seconds - to_start:.2f} s")

    def dcmtk_export(self, study: Study) -> Run:
        assert self.remote is not None
        into = self.tmp / "dcmtk-export"
        got = self.getscu(study.uid, into)
        files = files_in(into)
        if len(files) != len(study.files):
            raise CheckFailed(f"DCMTK export: getscu brought {len(files)} of {len(study.files)} instances")
        sent = self.storescu(files, REMOTE_AE, self.remote.port, calling=OUR_AE)
        self.remote_holds(study, "DCMTK export")
        shutil.rmtree(into)
        return Run("DCMTK getscu, then storescu", len(files), study.nbytes, got + sent,
                   split=f"getscu {got:.2f} s + storescu {sent:.2f} s")

    def remote_holds(self, study: Study, who: str) -> None:
        assert self.remote is not None
        held = self.remote.count(study.uid)
        self.remote.delete(study.uid)
        if held != len(study.files):
            raise CheckFailed(f"{who}: the remote PACS holds {held} of {len(study.files)} instances")

    def pacs_holds(self, study: Study, who: str) -> None:
        assert self.pacs is not None
        held = self.pacs.count(study.uid)
        self.pacs.delete(study.uid)
        if held != len(study.files):
            raise CheckFailed(f"{who}: the local PACS holds {held} of {len(study.files)} instances")

    def import_request(self) -> tuple[int, str]:
        """A new import request for SMITH, accepted (open, so an arrival matches it)."""
        import sqlalchemy as sa

        from app.auth.models import User
        from app.intake.service import RequestValues, create_request
        from app.patients.models import Patient
        from app.requests.statuses import Kind, Status
        from app.workflow.machine import transition

        answers = {"s_number": SMITH["s_number"], "family_name": "Smith", "given_name": "Margaret",
                   "dob": SMITH["dob"], "contact_name": "Dr Shah", "contact_phone": "0116",
                   "contact_email": "shah@uhl-tr.nhs.uk", "institution_name": "Leeds Teaching Hospitals",
                   "priority": "Standard", "requesting_clinician": "Dr Shah", "consultant": "Dr Jones",
                   "department": "Radiology"}
        with self.db() as session:
            patient = session.scalar(sa.select(Patient).where(Patient.s_number == SMITH["s_number"]))
            requester = session.get(User, self.requester_id)
            req = create_request(RequestValues(kind=Kind.IMPORT, patient=patient, answers=answers,
                                               exams=((date(2026, 12, 6), "CT chest abdomen pelvis", ""),)),
                                 requester)
            transition(req, Status.ACCEPTED, actor_id=self.analyst_id, actor="bench")
            session.commit()
            return req.id, req.call_ref

    def desk_import(self, study: Study) -> Run:
        """remote (storescu) -> the pool's gateway -> Download to PACS -> Delivered."""
        import sqlalchemy as sa

        from app.requests.models import Request
        from app.requests.statuses import Status
        from app.timeutil import aware
        from app.transfers import service
        from app.transfers.models import InboundStudy

        n = len(study.files)
        request_id, call_ref = self.import_request()
        wall = datetime.now(UTC)
        started = time.monotonic()
        push = self.storescu(study.files, OUR_AE, self.gateway_port)
        deadline = time.monotonic() + self.args.timeout
        while True:  # the arrival complete and matched: "Download to PACS" may go
            with self.db() as session:
                row = session.scalar(sa.select(InboundStudy).where(InboundStudy.study_uid == study.uid))
                ready = (row is not None and row.request_id == request_id and row.instances == n
                         and service.arrival_state(row)[0])
                state = "no arrival" if row is None else f"{row.instances} recorded, request {row.request_id}"
            if ready:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"desk import: the arrival is not complete and matched to {call_ref} "
                                  f"{self.args.timeout:g} s after the push ({state})")
            time.sleep(POLL)
        complete = time.monotonic() - started
        with self.db() as session:
            req = session.get(Request, request_id)
            plan = service.plan_download(req, again=False, partial=False)
            transfer = service.start_download(req, plan, self.analyst_id)
            session.commit()
            queue_it(session, transfer)
            transfer_id = transfer.id
        pressed = time.monotonic() - started
        t = self.wait_transfer(transfer_id, "desk import")
        seconds = (aware(t.finished_at) - wall).total_seconds()
        with self.db() as session:
            status = session.get(Request, request_id).status
        if status != Status.DELIVERED:
            raise CheckFailed(f"desk import: {call_ref} is {status}, not Delivered")
        self.pacs_holds(study, "desk import")
        return Run("desk import", n, study.nbytes, seconds,
                   split=f"push {push:.2f} s, arrival complete at {complete:.2f} s, Download pressed at "
                         f"{pressed:.2f} s, started at {(aware(t.started_at) - wall).total_seconds():.2f} s, "
                         f"Delivered at {seconds:.2f} s")

    def dcmtk_import(self, study: Study) -> Run:
        assert self.pacs is not None
        empty(self.received)
        push = self.storescu(study.files, STORESCP_AE, self.storescp_port)
        files = self.storescp_holds(len(study.files), "DCMTK import")
        store = self.storescu(files, PACS_AE, self.pacs.port, calling=OUR_AE)
        self.pacs_holds(study, "DCMTK import")
        empty(self.received)
        return Run("DCMTK storescu -> storescp, then storescu", len(files), study.nbytes, push + store,
                   split=f"push {push:.2f} s + storescu to the PACS {store:.2f} s")

    # -- the parts ---------------------------------------------------------------------------------------

    def part_gateway(self) -> list[Case]:
        study = self.study("timed", self.args.timed_instances)
        n, nbytes = len(study.files), study.nbytes
        case = Case("gateway", f"gateway receive: storescu pushing {n} instances ({nbytes / MB:.1f} MB), one "
                               "association")
        self.start_storescp()
        pool = self.start_pool("", gateway=True, dispatcher=False)
        store = self.data / "gateway" / "store" / study.uid
        try:
            for round_no in range(1, self.args.repeat + 1):
                empty(self.received)
                seconds = self.storescu(study.files, STORESCP_AE, self.storescp_port)
                self.storescp_holds(n, "storescu -> storescp")
                case.dcmtk.append(Run("DCMTK storescp --bit-preserving", n, nbytes, seconds))
                empty(self.received)
                shutil.rmtree(store, ignore_errors=True)
                since = datetime.now(UTC)
                seconds = self.storescu(study.files, OUR_AE, self.gateway_port)
                self.gateway_holds(study, since)
                case.desk.append(Run("desk gateway (worker.py, database)", n, nbytes, seconds))
                shutil.rmtree(store, ignore_errors=True)
                seconds = self.inprocess_gateway(study)
                case.reference.append(Run("GatewaySCP in process, no database", n, nbytes, seconds))
                print(f"  round {round_no}: storescp {case.dcmtk[-1].seconds:.2f} s, gateway "
                      f"{case.desk[-1].seconds:.2f} s, GatewaySCP alone {seconds:.2f} s", flush=True)
        finally:
            self.stop_pool(pool)
        return [case]

    def part_retrieve(self) -> list[Case]:
        study = self.study("timed", self.args.timed_instances)
        n, nbytes = len(study.files), study.nbytes
        self.start_orthancs(remote=False)
        self.put_on_pacs(study)
        case = Case("retrieve", f"retrieval: C-GET of a {n}-instance study ({nbytes / MB:.1f} MB) from the local "
                                "PACS (Orthanc), written to disk")
        into = self.tmp / "retrieved"
        for round_no in range(1, self.args.repeat + 1):
            seconds = self.getscu(study.uid, into)
            if len(got := files_in(into)) != n:
                raise CheckFailed(f"getscu brought {len(got)} of {n} instances")
            case.dcmtk.append(Run("DCMTK getscu --bit-preserving", n, nbytes, seconds))
            answer = self.desk_cget(study.uid, into)
            self.check_cget(answer, into, n)
            case.desk.append(Run("desk C-GET (retrieve_study)", n, nbytes, float(answer["seconds"]),
                                 peak_rss=int(answer["peak_rss"])))
            shutil.rmtree(into)
            print(f"  round {round_no}: getscu {case.dcmtk[-1].seconds:.2f} s, desk C-GET "
                  f"{case.desk[-1].seconds:.2f} s (peak RSS {answer['peak_rss'] / 2**20:.0f} MiB)", flush=True)
        return [case]

    def part_e2e(self) -> list[Case]:
        n = self.args.timed_instances
        study = self.study("timed", n)
        self.start_orthancs(remote=True)
        self.start_storescp()
        self.put_on_pacs(study)
        export = Case("e2e", f"end to end, export: local PACS -> remote PACS, {n} instances "
                             f"({study.nbytes / MB:.1f} MB), start to Delivered")
        imports = Case("e2e", f"end to end, import: remote (storescu) -> gateway -> local PACS, {n} instances, "
                              "start to Delivered")
        pool = self.start_pool("outbound=1;inbound=1", gateway=True, dispatcher=True)
        try:
            for round_no in range(1, self.args.repeat + 1):
                export.dcmtk.append(self.dcmtk_export(study))
                export.desk.append(self.desk_export(study))
                print(f"  round {round_no}, export: DCMTK {export.dcmtk[-1].seconds:.2f} s "
                      f"({export.dcmtk[-1].split}); desk {export.desk[-1].seconds:.2f} s ({export.desk[-1].split})",
                      flush=True)
                incoming = self.study(f"import-{round_no}", n, patient_id="LTH7654321", patient_name="SMITH^MARGARET",
                                      birth_date="19480314", description="CT CHEST ABDOMEN PELVIS")
                imports.dcmtk.append(self.dcmtk_import(incoming))
                imports.desk.append(self.desk_import(incoming))
                print(f"  round {round_no}, import: DCMTK {imports.dcmtk[-1].seconds:.2f} s "
                      f"({imports.dcmtk[-1].split}); desk {imports.desk[-1].seconds:.2f} s "
                      f"({imports.desk[-1].split})", flush=True)
        finally:
            self.stop_pool(pool)
        return [export, imports]

    def part_memory(self) -> list[Case]:
        import psutil

        large = self.study("memory-large", self.args.instances)
        small_files = large.files[: self.args.small]
        gateway = Case("memory", "peak RSS of the gateway process (a fresh gateway-only pool per size)", barred=False)
        for files in (small_files, large.files):
            pool = self.start_pool("", gateway=True, dispatcher=False)
            try:
                children = psutil.Process(pool.pid).children()
                if len(children) != 1:
                    raise CheckFailed(f"a gateway-only pool has {len(children)} child processes, expected 1")
                reset_peak(children[0].pid)  # the push's peak, not the start-up's
                at_rest = vm_hwm(children[0].pid)
                since = datetime.now(UTC)
                seconds = self.storescu(files, OUR_AE, self.gateway_port)
                self.gateway_holds(Study(large.uid, files), since)
                peak = vm_hwm(children[0].pid)
            finally:
                self.stop_pool(pool)
            shutil.rmtree(self.data / "gateway" / "store" / large.uid, ignore_errors=True)
            gateway.desk.append(Run("gateway process", len(files), sum(p.stat().st_size for p in files), seconds,
                                    peak_rss=peak, at_rest=at_rest))
            print(f"  gateway, {len(files)} instances: peak RSS {peak / 2**20:.1f} MiB (before the push "
                  f"{at_rest / 2**20:.1f} MiB)", flush=True)
        self.start_orthancs(remote=False)
        small = self.study("memory-small", self.args.small)
        cget = Case("memory", "peak RSS of the process running the desk's C-GET (a fresh interpreter per size)",
                    barred=False)
        into = self.tmp / "retrieved"
        for study in (small, large):
            self.put_on_pacs(study)
            answer = self.desk_cget(study.uid, into)
            self.check_cget(answer, into, len(study.files))
            shutil.rmtree(into)
            cget.desk.append(Run("C-GET process", len(study.files), study.nbytes, float(answer["seconds"]),
                                 peak_rss=int(answer["peak_rss"]), at_rest=int(answer["at_rest"])))
            print(f"  C-GET, {len(study.files)} instances: peak RSS {answer['peak_rss'] / 2**20:.1f} MiB (before the "
                  f"call {answer['at_rest'] / 2**20:.1f} MiB)", flush=True)
        return [gateway, cget]

    # -- tear-down ---------------------------------------------------------------------------------------

    def close(self) -> None:
        for pool in list(self.pools):
            stop_family(pool)
        stop_process(self.storescp)
        peers = [p for p in (self.pacs, self.remote) if p is not None]
        for peer in peers:  # Orthanc takes seconds to stop: ask all, then wait for each
            if peer.proc.poll() is None:
                peer.proc.terminate()
        for peer in peers:
            stop_process(peer.proc)
        if self.app is not None:
            with contextlib.suppress(Exception), self.app.app_context():
                from app.extensions import db

                db.engine.dispose()
        if self.redis_pid_file is not None and self.redis_pid_file.exists():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self.redis_pid_file.read_text().strip()), signal.SIGTERM)


def queue_it(session: Any, transfer: Any) -> None:  # noqa: ANN401 - a session and a Transfer
    """`service.enqueue` as a Send calls it; None is fine when the pool's dispatcher queued
    the new row first (it picks up jobless queued transfers every second)."""
    from app.transfers import service

    if not service.enqueue(transfer, seen_job_id=""):
        session.refresh(transfer)
        if not transfer.job_id:
            raise CheckFailed(f"transfer {transfer.id} was not queued")


# --- the report ------------------------------------------------------------------------------------------


def report(cases: list[Case], failures: list[str], args: argparse.Namespace) -> bool:
    """Print every case and its bar; True when every bar passes."""
    bars: list[tuple[bool, str]] = []
    print()
    print(f"Receiving, median of {args.repeat} run(s) each (MB = 10^6 bytes; x DCMTK = the desk's MB/s over "
          "DCMTK's in the same run)")
    for case in cases:
        print()
        print(case.title)
        if case.part == "memory":
            small, large = case.desk
            growth = large.peak_rss / small.peak_rss - 1
            print(f"  {small.instances:,} instances {small.peak_rss / 2**20:.1f} MiB, {large.instances:,} instances "
                  f"{large.peak_rss / 2**20:.1f} MiB ({growth:+.1%}); at rest before (RSS) "
                  f"{small.at_rest / 2**20:.1f} and {large.at_rest / 2**20:.1f} MiB")
            bars.append((growth <= BAR_RSS_GROWTH, f"{case.title.split(' (')[0]}: at {large.instances:,} within "
                                                  f"10 % of {small.instances:,}: {growth:+.1%}"))
            continue
        base, ours = median_run(case.dcmtk), median_run(case.desk)
        print(f"  {'':<52} {'seconds':>8} {'MB/s':>8} {'x DCMTK':>8}")
        rows = [(base, f"{base.label} [baseline]"), (ours, ours.label)]
        rows += [(median_run(case.reference), case.reference[0].label + " (reference)")] if case.reference else []
        for run, label in rows:
            print(f"  {label:<52} {run.seconds:>8.2f} {run.mb_s:>8.1f} {run.mb_s / base.mb_s:>7.2f}x"
                  + (f"  {run.split}" if run.split else ""))
        if args.repeat > 1:
            for name, runs in (("DCMTK", case.dcmtk), ("desk", case.desk), ("reference", case.reference)):
                if runs:
                    print(f"    all {name} runs (MB/s): " + ", ".join(f"{r.mb_s:.1f}" for r in runs))
        ratio = ours.mb_s / base.mb_s
        bars.append((ratio >= BAR_VS_DCMTK, f"{case.title.split(':')[0]}: {ratio:.2f} x DCMTK (bar "
                                            f"{BAR_VS_DCMTK:.1f} x)"))
    print()
    for ok, text in bars:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    for text in failures:
        print(f"  FAIL  {text}")
    return all(ok for ok, _ in bars)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="run this part only (may be given more than once); default: all four")
    parser.add_argument("--timed-instances", type=int, default=600,
                        help="instances in the study of the timed parts: gateway, retrieve, e2e (default 600)")
    parser.add_argument("--instances", type=int, default=1000,
                        help="instances in the memory part's large run (default 1000)")
    parser.add_argument("--small", type=int, default=200, help="instances in the memory part's small run (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each timed case; the median counts (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a transfer or an arrival may take")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the scratch folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, database, studies)")
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the C-ECHO waits for peers are expected to fail
    logging.getLogger("app.dicom").setLevel(logging.WARNING)  # the in-process GatewaySCP's "listening" lines
    if not 0 < args.small < args.instances or args.timed_instances < 1 or args.repeat < 1:
        fail("--small must be between 0 and --instances; --timed-instances and --repeat at least 1")
    for binary in ("storescp", "storescu", "getscu"):
        if shutil.which(binary) is None:
            fail(f"{binary} is missing: install the Debian package dcmtk (scripts/setup does)")
    if {"retrieve", "e2e", "memory"} & set(parts) and not os.access("/usr/sbin/Orthanc", os.X_OK):
        fail("/usr/sbin/Orthanc is missing: install the Debian package orthanc (scripts/setup does)")
    # The studies, Orthanc's copies and a received copy at a time: about 0.53 MB an instance each.
    need = int(0.53 * MB * (4 * args.timed_instances * (1 + args.repeat) + 3 * (args.instances + args.small)))
    if (free := shutil.disk_usage(args.tmp_dir).free) < need:
        fail(f"{args.tmp_dir} has {free / 1e9:.1f} GB free; the run needs about {need / 1e9:.1f} GB")

    # SIGTERM as Ctrl+C: unwind through the finally below, which stops every process by pid.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="iep-bench-receive-", dir=args.tmp_dir))
    bench = Bench(args, tmp)
    cases: list[Case] = []
    failures: list[str] = []
    runners: dict[str, Callable[[], list[Case]]] = {
        "gateway": bench.part_gateway, "retrieve": bench.part_retrieve, "e2e": bench.part_e2e,
        "memory": bench.part_memory}
    started = time.monotonic()
    try:
        bench.setup()
        for part in PARTS:
            if part not in parts:
                continue
            print(f"{part}:", flush=True)
            try:
                cases += runners[part]()
            except CheckFailed as exc:
                failures.append(f"part {part}: {exc}")
                print(f"  FAIL: {exc}", flush=True)
        ok = report(cases, failures, args)
        print(f"\n(whole run {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs at the end)")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 2 if failures else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
