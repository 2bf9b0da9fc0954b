"""Sending a 1,000-instance CT study: the worker against tuned DCMTK and stock pynetdicom.

Run on demand, not by the test suite (see bench/README.md):

    .venv/bin/python bench/transfer.py [--instances 1000] [--small 200] [--repeat 1]
                                       [--tmp-dir /tmp] [--keep]

One generated CT study (512 x 512 x 16 bit, about 0.5 MB an instance, 4 series) is written
into a scratch desk's gateway store and sent over loopback to one DCMTK `storescp`
(TCP_NODELAY=1, 128 KB PDU, writing what it receives) by three senders:

1. **the worker**: a real pool (`python worker.py`, IEP_WORKERS="outbound=1", no cron, no
   gateway) on a scratch SQLite database and an embedded Redis. Each run is an outbound
   transfer whose items are the stored files (the study counts as staged, so the engine
   goes straight to sending); the job is `run_transfer` itself, wrapped only to time
   `engine.send_items` in the work-horse. The timed phase is the send: one association,
   every file streamed from disk, each instance marked sent in the database and the
   progress heartbeat written, as in production. The verification that follows (a C-FIND
   at the destination) cannot succeed against storescp, which answers no queries, so
   each transfer ends Failed with that reason (max_attempts=1: no retries); it is not
   timed. The work-horse's process tree is sampled for RSS (psutil, every 5 ms, plus the
   kernel's VmHWM, read every 50 ms) in a run of --small instances and in the full run.
2. **DCMTK storescu** with TCP_NODELAY=1 (its best setting; the named baseline).
3. **stock pynetdicom**: `AE().associate` and `send_c_store(path)` per file, all defaults
   (no TCP_NODELAY, no chunked sending), in a fresh interpreter.

For reference only (no bar), a fourth line: the desk's own sender, `scu.send_files`, in
the bench process with the worker's AE settings but no engine and no database, which
splits the worker's cost between the DICOM layer and the transfer engine around it.

Every sender's run is checked: storescp must hold every instance afterwards (its folder
is emptied between runs). MB are 10^6 bytes. Bars (the issue's): the worker reaches at
least 1/3 of tuned DCMTK's throughput and at least 4x stock pynetdicom's, and its peak
RSS at --instances is within 10 % of that at --small. Everything generated (about
0.55 MB an instance, twice over while storescp holds a copy) lives in a temporary
folder that is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `app` is the repository's
from bench.support import free_port, vm_hwm  # noqa: E402 - after the repository is on sys.path

STORESCP_AE = "STORESCP"
MB = 1_000_000
RSS_SAMPLE_SECONDS = 0.005
RSS_LOOK_SECONDS = 0.05
BAR_VS_DCMTK = 1 / 3
BAR_VS_STOCK = 4.0
BAR_RSS_GROWTH = 0.10

# The stock pynetdicom sender, run in its own interpreter so that nothing the desk imports
# can change pynetdicom's defaults for it.
STOCK_SENDER = r"""
import json, sys, time
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
port, called, listing = int(sys.argv[1]), sys.argv[2], sys.argv[3]
paths = open(listing).read().split("\n")
ae = AE()
ae.add_requested_context(CTImageStorage)
started = time.perf_counter()
assoc = ae.associate("127.0.0.1", port, ae_title=called)
ok, error = 0, ""
if assoc.is_established:
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            ok += bool(status) and status.Status == 0
        assoc.release()
    except RuntimeError as exc:  # the association went away under it
        error = str(exc)
print(json.dumps({"seconds": time.perf_counter() - started, "ok": ok, "error": error}))
"""


# --- the job the worker runs (imported by the work-horse as bench.transfer) ----------------------


def timed_transfer(transfer_id: int) -> dict[str, object]:
    """`jobs.run_transfer`, with `engine.send_items` timed: runs in the worker's work-horse."""
    from app.transfers import engine, jobs

    timings: dict[str, float] = {}
    real = engine.send_items

    def send_items(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            timings["send"] = timings.get("send", 0.0) + time.perf_counter() - started

    engine.send_items = send_items
    started = time.perf_counter()
    try:
        state = jobs.run_transfer(transfer_id)
    finally:
        engine.send_items = real
    return {"state": state, "send_seconds": timings.get("send"), "job_seconds": time.perf_counter() - started,
            "pid": os.getpid()}


# --- helpers ------------------------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    print(f"transfer bench: {message}", file=sys.stderr)
    sys.exit(2)



def nodelay_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Run:
    sender: str
    instances: int
    nbytes: int
    seconds: float
    peak_rss: int = 0  # bytes; worker runs only
    job_seconds: float | None = None
    note: str = ""

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    files: list[Path] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    storescp: subprocess.Popen | None = None
    storescp_port: int = 0
    received: Path = Path()
    worker: subprocess.Popen | None = None
    redis_pid_file: Path | None = None
    app: object = None
    env: dict[str, str] = field(default_factory=dict)

    # -- set-up --------------------------------------------------------------------------------

    def setup(self) -> None:
        from flask_migrate import upgrade

        from app import create_app
        from app.config import Settings
        from app.dicom.synth import make_study
        from app.embedded_redis import ensure_embedded_redis
        from app.extensions import db

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
                    "IEP_DATA_DIR": str(data), "IEP_WORKERS": "outbound=1", "IEP_CRON": "0", "IEP_GATEWAY": "0",
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("TCP_NODELAY", None)  # the worker sets TCP_NODELAY on its own sockets
        self.app = create_app(settings)
        with self.app.app_context():
            upgrade()
            db.engine.dispose()

        study_uid = f"2.25.{uuid.uuid4().int}"
        store = data / "gateway" / "store" / study_uid
        print(f"generating {self.args.instances} CT instances of 512 x 512 in {store} ...", flush=True)
        started = time.perf_counter()
        per_series = -(-self.args.instances // 4)
        paths = make_study(store, patient_id="S9999999", patient_name="BENCH^TRANSFER", birth_date="19700101",
                           study_date="20261128", n_series=4, n_per_series=per_series, rows=512, cols=512,
                           study_uid=study_uid, accession="BENCH1", description="BENCH CT 1000")
        self.files = paths[: self.args.instances]
        for extra in paths[self.args.instances:]:
            extra.unlink()
        self.sizes = [p.stat().st_size for p in self.files]
        print(f"  {len(self.files)} files, {sum(self.sizes) / MB:.1f} MB "
              f"({statistics.mean(self.sizes) / MB:.3f} MB an instance) in {time.perf_counter() - started:.1f} s")

    def start_storescp(self) -> None:
        from app.dicom.ae import AEConfig, Node, Timeouts
        from app.dicom.errors import DicomFailure
        from app.dicom.scu import echo

        self.received = self.tmp / "received"
        self.received.mkdir()
        self.storescp_port = free_port()
        log = (self.tmp / "storescp.log").open("wb")
        self.storescp = subprocess.Popen(
            ["storescp", "--aetitle", STORESCP_AE, "--output-directory", str(self.received), "--max-pdu", "131072",
             *(["--ignore"] if self.args.discard else ["--bit-preserving"]), str(self.storescp_port)],
            env=nodelay_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        node = Node(STORESCP_AE, "127.0.0.1", self.storescp_port)
        quick = AEConfig(ae_title="BENCH", timeouts=Timeouts(connection=2, acse=5, dimse=10, network=30))
        deadline = time.monotonic() + 20
        while True:
            try:
                echo(node, config=quick)
                return
            except DicomFailure:
                if time.monotonic() > deadline or self.storescp.poll() is not None:
                    fail(f"storescp did not answer a C-ECHO; see {self.tmp / 'storescp.log'}")
                time.sleep(0.1)

    def start_worker(self) -> None:
        from rq import Worker

        from app.extensions import redis_conn

        log = (self.tmp / "worker.log").open("wb")
        self.worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with self.app.app_context():
            deadline = time.monotonic() + 30
            while not Worker.all(connection=redis_conn()):
                if time.monotonic() > deadline or self.worker.poll() is not None:
                    fail(f"the worker did not start; see {self.tmp / 'worker.log'}")
                time.sleep(0.1)

    # -- checks -----------------------------------------------------------------------------------

    def take_received(self, expected: int, sender: str) -> None:
        """storescp must hold every instance; then empty its folder for the next run."""
        if self.args.discard:
            return  # storescp --ignore keeps nothing; the senders' own status checks remain
        deadline = time.monotonic() + 10  # storescp may still be closing its last file
        while True:
            count = sum(1 for p in self.received.rglob("*") if p.is_file())
            if count >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.empty_received()
        if count != expected:
            fail(f"{sender}: storescp received {count} of {expected} instances")

    def empty_received(self) -> None:
        if not self.args.discard:
            for path in self.received.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    # -- the three senders ----------------------------------------------------------------------

    def run_dcmtk(self) -> Run:
        n = len(self.files)
        started = time.perf_counter()
        done = subprocess.run(
            ["storescu", "--aetitle", "DCMTKSCU", "--call", STORESCP_AE, "--max-pdu", "131072", "--no-halt",
             "127.0.0.1", str(self.storescp_port), *map(str, self.files)],
            check=False, env=nodelay_env(), capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            fail(f"storescu failed ({done.returncode}): {done.stderr[-500:]}")
        self.take_received(n, "DCMTK storescu")
        return Run("DCMTK storescu, TCP_NODELAY=1", n, sum(self.sizes), seconds)

    def run_stock(self, tries: int = 3) -> Run:
        """Stock pynetdicom sometimes loses a response to its own reactor thread, waits out
        its DIMSE timeout (30 s) and aborts (the race app.dicom.ae.guard_reactor_race works
        around): such a run is said, not counted, and run again, up to `tries` times."""
        n = len(self.files)
        listing = self.tmp / "files.txt"
        listing.write_text("\n".join(map(str, self.files)))
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        for attempt in range(1, tries + 1):
            done = subprocess.run([sys.executable, "-c", STOCK_SENDER, str(self.storescp_port), STORESCP_AE,
                                   str(listing)], check=False, env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                fail(f"the stock pynetdicom sender failed: {done.stderr[-800:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["ok"] == n:
                self.take_received(n, "stock pynetdicom")
                return Run("stock pynetdicom", n, sum(self.sizes), float(result["seconds"]),
                           note=f"{attempt - 1} lost run(s) before this one" if attempt > 1 else "")
            print(f"  (stock pynetdicom stored {result['ok']} of {n} and stopped after "
                  f"{result['seconds']:.1f} s: {result['error'] or 'failure statuses'}; not counted, run again)",
                  flush=True)
            time.sleep(1)  # storescp may still be closing the last file
            self.empty_received()
        fail(f"the stock pynetdicom sender lost its association in {tries} runs out of {tries}")

    def run_scu(self) -> Run:
        """For reference, not a bar: the desk's sender (`scu.send_files`) in this process,
        without the worker, the engine or the database."""
        from app.dicom.ae import Node
        from app.dicom.scu import send_files
        from app.transfers import service

        n = len(self.files)
        with self.app.app_context():
            config = service.ae_config()
        started = time.perf_counter()
        result = send_files(Node(STORESCP_AE, "127.0.0.1", self.storescp_port), self.files, config=config)
        seconds = time.perf_counter() - started
        if not result.ok:
            fail(f"scu.send_files: {result.sent} of {n} sent")
        self.take_received(n, "scu.send_files")
        return Run("scu.send_files alone (reference)", n, sum(self.sizes), seconds)

    def run_worker(self, n: int) -> Run:
        import psutil
        import sqlalchemy as sa
        from pydicom import dcmread
        from pydicom.filereader import read_file_meta_info
        from rq import Queue

        from app.extensions import db, redis_conn
        from app.transfers import service
        from app.transfers.cli import upsert_node
        from app.transfers.models import Direction, Transfer, TransferItem

        files, sizes = self.files[:n], self.sizes[:n]
        with self.app.app_context():
            source = upsert_node("Bench source (not contacted)", "BENCHSRC", "127.0.0.1", 9, "local_pacs")
            dest = upsert_node("Bench storescp", STORESCP_AE, "127.0.0.1", self.storescp_port, "remote",
                               supports_get=False)
            db.session.flush()
            study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            transfer = service.create_transfer(request=None, direction=Direction.OUTBOUND, priority="Standard",
                                               source=source, dest=dest, study_uids=[study_uid], user_id=None)
            transfer.max_attempts = 1
            db.session.add_all(
                TransferItem(transfer_id=transfer.id, study_uid=study_uid,
                             sop_uid=str(read_file_meta_info(path).MediaStorageSOPInstanceUID), path=str(path),
                             size=size)
                for path, size in zip(files, sizes, strict=True))
            db.session.commit()
            transfer_id = transfer.id
            job = Queue("outbound", connection=redis_conn()).enqueue(
                "bench.transfer.timed_transfer", transfer_id, job_timeout=3600, result_ttl=3600,
                job_id=f"bench-transfer-{transfer_id}")
            db.session.remove()

            # Sample the work-horse's process tree until the job ends. The memory reads are
            # cheap (/proc/<pid>/statm) and run every 5 ms; finding the tree (psutil walks all
            # of /proc) and asking Redis for the job's status run every 50 ms, so that the
            # sampler takes little of the two cores the sender and storescp share.
            supervisor = psutil.Process(self.worker.pid)
            peak, hwm = 0, 0
            tree: list[psutil.Process] = []
            status, next_look = "queued", 0.0
            while True:
                now = time.monotonic()
                if now >= next_look:
                    next_look = now + RSS_LOOK_SECONDS
                    status = job.get_status(refresh=True)
                    tree = []
                    with contextlib.suppress(psutil.NoSuchProcess):
                        for horse in (h for w in supervisor.children() for h in w.children()):
                            tree += [horse, *horse.children(recursive=True)]
                            hwm = max(hwm, vm_hwm(horse.pid))
                try:
                    peak = max(peak, sum(p.memory_info().rss for p in tree))
                except psutil.NoSuchProcess:
                    next_look = 0.0
                if status in ("finished", "failed", "stopped", "canceled"):
                    break
                time.sleep(RSS_SAMPLE_SECONDS)
            if status != "finished":
                latest = job.latest_result()
                fail(f"the worker's job ended {status}: {latest.exc_string if latest else ''}")
            result = job.return_value()
            transfer = db.session.get(Transfer, transfer_id)
            sent = db.session.scalar(sa.select(sa.func.count(TransferItem.id)).where(
                TransferItem.transfer_id == transfer_id, TransferItem.sent))
            note = f"transfer {transfer.state}: {transfer.last_error[:120]}"
            db.session.remove()
        if sent != n or not result.get("send_seconds"):
            fail(f"worker: {sent} of {n} instances marked sent ({note})")
        self.take_received(n, "worker")
        return Run("worker (send phase)", n, sum(sizes), float(result["send_seconds"]), peak_rss=max(peak, hwm),
                   job_seconds=float(result["job_seconds"]), note=note)

    # -- tear-down ------------------------------------------------------------------------------

    def close(self) -> None:
        stop(self.worker)
        stop(self.storescp)
        if self.redis_pid_file is not None and self.redis_pid_file.exists():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(self.redis_pid_file.read_text().strip()), signal.SIGTERM)



def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[(len(ordered) - 1) // 2]


def report(args: argparse.Namespace, dcmtk: list[Run], stock: list[Run], worker: list[Run],
           small: list[Run], scu: list[Run]) -> bool:
    base, slow, ours, layer = median_run(dcmtk), median_run(stock), median_run(worker), median_run(scu)
    print()
    print(f"Sending {ours.instances:,} instances, {ours.nbytes / MB:.1f} MB, over loopback to DCMTK storescp "
          f"(TCP_NODELAY=1, 128 KB PDU, {'discarding' if args.discard else 'writing'} what it receives); "
          f"median of {args.repeat} run(s) each")
    print(f"{'sender':<42} {'seconds':>8} {'MB/s':>8} {'vs tuned DCMTK':>15} {'vs stock pynetdicom':>20}")
    for run, label in ((base, "DCMTK storescu, TCP_NODELAY=1 [baseline]"), (ours, ours.sender),
                       (slow, "stock pynetdicom sender"), (layer, layer.sender)):
        print(f"{label:<42} {run.seconds:>8.2f} {run.mb_s:>8.1f} {run.mb_s / base.mb_s:>14.2f}x "
              f"{run.mb_s / slow.mb_s:>19.2f}x")
    if args.repeat > 1:
        for name, runs in (("DCMTK", dcmtk), ("worker", worker), ("stock", stock), ("scu.send_files", scu)):
            print(f"  all {name} runs (MB/s): " + ", ".join(f"{r.mb_s:.1f}" for r in runs))
    print(f"worker: whole job {ours.job_seconds:.2f} s ({ours.nbytes / MB / ours.job_seconds:.1f} MB/s), "
          f"the rest being set-up and the failed verification; {ours.note}")
    rss_small = max(r.peak_rss for r in small)
    rss_full = max(r.peak_rss for r in worker)
    growth = rss_full / rss_small - 1
    print(f"worker peak RSS (work-horse tree): {small[0].instances:,} instances {rss_small / 2**20:.1f} MiB, "
          f"{ours.instances:,} instances {rss_full / 2**20:.1f} MiB ({growth:+.1%})")
    bars = [
        (ours.mb_s / base.mb_s >= BAR_VS_DCMTK,
         f"worker >= 1/3 of tuned DCMTK: {ours.mb_s / base.mb_s:.2f} (bar {BAR_VS_DCMTK:.2f})"),
        (ours.mb_s / slow.mb_s >= BAR_VS_STOCK,
         f"worker >= 4x stock pynetdicom: {ours.mb_s / slow.mb_s:.2f}x (bar {BAR_VS_STOCK:.0f}x)"),
        (growth <= BAR_RSS_GROWTH,
         f"peak RSS at {ours.instances:,} within 10 % of {small[0].instances:,}: {growth:+.1%}"),
    ]
    for ok, text in bars:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for ok, _ in bars)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances in the study (default 1000)")
    parser.add_argument("--small", type=int, default=200, help="instances in the worker's small run (default 200)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per sender; the median counts (default 1)")
    parser.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the scratch folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--discard", action="store_true",
                        help="storescp --ignore: receive but write nothing (measures the senders without the "
                             "receiver's disk); no received-count check")
    args = parser.parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the C-ECHO wait for storescp is expected to fail
    if not 0 < args.small < args.instances:
        fail("--small must be between 0 and --instances")
    for binary in ("storescp", "storescu"):
        if shutil.which(binary) is None:
            fail(f"{binary} is missing: install the Debian package dcmtk (scripts/setup does)")
    need = int(args.instances * 0.53 * MB * 2.2)
    free = shutil.disk_usage(args.tmp_dir).free
    if free < need:
        fail(f"{args.tmp_dir} has {free / 1e9:.1f} GB free; the run needs about {need / 1e9:.1f} GB")

    tmp = Path(tempfile.mkdtemp(prefix="iep-bench-transfer-", dir=args.tmp_dir))
    bench = Bench(args, tmp)
    try:
        bench.setup()
        bench.start_storescp()
        bench.start_worker()
        dcmtk, stock, worker, small, scu = [], [], [], [], []
        for round_no in range(1, args.repeat + 1):
            print(f"round {round_no} of {args.repeat}:", flush=True)
            for label, runner, bucket in (
                ("DCMTK storescu", bench.run_dcmtk, dcmtk),
                (f"worker, {args.small} instances", lambda: bench.run_worker(args.small), small),
                (f"worker, {args.instances} instances", lambda: bench.run_worker(args.instances), worker),
                ("stock pynetdicom", bench.run_stock, stock),
                ("scu.send_files alone", bench.run_scu, scu),
            ):
                run = runner()
                bucket.append(run)
                rss = f", peak RSS {run.peak_rss / 2**20:.1f} MiB" if run.peak_rss else ""
                print(f"  {label:<26} {run.seconds:7.2f} s  {run.mb_s:7.1f} MB/s{rss}", flush=True)
        ok = report(args, dcmtk, stock, worker, small, scu)
    finally:
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
