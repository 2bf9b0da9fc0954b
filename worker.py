"""The worker pool: RQ workers per lane, from configuration (DESIGN "Transfers").

    python worker.py            # the default pool
    IEP_WORKERS="outbound-bluelight=1;outbound-bluelight,outbound,outbound-batch=4;..." python worker.py

Each lane is a set of queues in priority order and a worker count; a queue name that
`app/queues.py` does not list stops the pool before it starts (exit status 2). The supervisor
starts one process per worker, replaces any that dies, and on SIGTERM/SIGINT asks every
worker for a warm shutdown (finish the job in hand), then exits.

Beside the workers it runs one `dispatcher` process, which queues each transfer when
the database says it is due (retries, Batch windows; see `run_dispatcher`), and one `cron`
process: RQ's CronScheduler, which enqueues the periodic jobs of `app/schedule.py` (outbox
flush, auto-cancel) on the `maintenance` queue. It is supervised like a worker. A second
pool on another host may set IEP_CRON=0 to skip it; two would only enqueue the same
idempotent jobs twice.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing import Process

from app import create_app
from app.extensions import db
from app.logs import SingleLineFormatter
from app.queues import MAINTENANCE, QUEUES, queue

log = logging.getLogger("iep.worker")

DEFAULT_LANES = (
    "outbound-bluelight=1;"
    "outbound-bluelight,outbound,outbound-batch=4;"
    "inbound-bluelight,inbound=4;"
    "maintenance=1"
)


def parse_lanes(spec: str) -> list[tuple[list[str], int]]:
    """`"a,b=2;c=1"` -> `[(["a", "b"], 2), (["c"], 1)]`; raises ValueError when malformed
    or when it names a queue that `app/queues.py` does not (a worker on a misspelt lane
    would wait for ever while the real lane's jobs pile up)."""
    lanes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        queues, _, count = part.rpartition("=")
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names or not count.strip().isdigit():
            raise ValueError(f"malformed lane {part!r}: expected 'queue,queue=count'")
        unknown = [n for n in names if n not in QUEUES]
        if unknown:
            raise ValueError(f"unknown queue {', '.join(map(repr, unknown))} in lane {part!r}; "
                             f"the queues are: {', '.join(QUEUES)}")
        lanes.append((names, int(count)))
    return lanes


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _child(target: Callable[..., None], args: tuple[object, ...]) -> None:
    """Run `target` in a supervised child, with the default stop signals until RQ sets its own.

    The child is forked with SIGTERM/SIGINT blocked (see `supervise.start`) and inherits
    the supervisor's handlers; it resets them before unblocking, so a SIGTERM arriving
    while it starts ends it instead of running the supervisor's stop() in the child.
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    target(*args)


class _StopFlag:
    """Set by SIGTERM/SIGINT; a long-running child polls it.

    A plain attribute, not a threading.Event: Event.set() takes a non-reentrant lock, and
    a signal handler that runs while the main thread holds it (inside Event.wait) waits
    for ever — a pool that would not stop on SIGTERM, seen in the fault tests.
    """

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: object) -> None:
        self.stopped = True

    def __bool__(self) -> bool:
        return self.stopped


def run_worker(queues: list[str], name: str) -> None:
    """One RQ worker process: its own app, its own database and Redis connections."""
    from rq import Worker

    from app.extensions import redis_conn

    app = create_app()
    with app.app_context():
        db.engine.dispose()  # never share a pooled connection across fork()
        worker = Worker([queue(q) for q in queues], connection=redis_conn(), name=name)
        worker.work(with_scheduler=(MAINTENANCE in queues), logging_level="INFO")


def run_cron(name: str) -> None:
    """The pool's cron process: RQ's CronScheduler enqueueing the periodic jobs.

    It only enqueues (on `maintenance`); the maintenance worker runs the jobs. SIGTERM
    makes CronScheduler stop cleanly.
    """
    from rq.cron import CronScheduler

    from app.extensions import redis_conn
    from app.schedule import register_cron

    app = create_app()
    with app.app_context():
        db.engine.dispose()
        scheduler = CronScheduler(connection=redis_conn(), name=name)
        register_cron(scheduler)
        scheduler.start()


def run_gateway(name: str) -> None:
    """The exchange gateway's Storage SCP (GATEWAY_AE_TITLE on GATEWAY_PORT).

    Each stored instance is recorded and matched to an import request in the database;
    if recording fails, the sender is told to try again (0xA700), so nothing is lost.
    Each refused (quarantined) instance is recorded too, for the desk's Arrivals page.
    """

    from app.dicom.scp import GatewaySCP
    from app.transfers import service
    from app.transfers.gateway import ArrivalRecorder
    from app.transfers.inbound import in_app_context, record_quarantined

    app = create_app()
    with app.app_context():
        db.engine.dispose()
        settings = app.config["IEP_SETTINGS"]
        store, quarantine = service.gateway_store(), service.gateway_quarantine()

    # Called from the SCP's association threads, each in an app context of its own.
    recorder = ArrivalRecorder(app)
    scp = GatewaySCP(ae_title=settings.gateway_ae_title, port=settings.gateway_port, storage_dir=store,
                     quarantine_dir=quarantine, on_stored=recorder.on_stored,
                     on_quarantined=in_app_context(app, record_quarantined),
                     on_sender_done=recorder.on_sender_done, config=service_config(app),
                     bind=settings.gateway_bind)
    stop = _StopFlag()
    scp.start()
    log.info("%s: gateway %s listening on %s:%s", name, settings.gateway_ae_title, settings.gateway_bind,
             settings.gateway_port)
    while not stop:
        time.sleep(0.5)
        recorder.flush()  # arrivals not yet noted in the database (at most RECORD_EVERY old)
    scp.stop()
    recorder.flush()


DISPATCH_EVERY = 1.0  # seconds: a retry or a Batch window starts at most this late
RECONCILE_EVERY = 10.0  # seconds: a lost job (Redis restarted, worker killed) is found this soon


def run_dispatcher(name: str) -> None:
    """The pool's scheduler: the database says when a transfer may run, this process
    queues it then (issue 8.1). Every second it queues due transfers that have no job
    (`jobs.dispatch_due`: retries, Batch windows, anything Redis missed); every ten it
    runs the watchdog (`jobs.reconcile`) — which cron also runs, on the maintenance queue,
    as a backstop. Both are idempotent, so a second pool's dispatcher does no harm.

    RQ's own scheduler is not used for this: it promotes a scheduled job only from a
    worker listening to that job's queue, so a lane without one never ran its retries.
    """

    from app.transfers import jobs

    app = create_app()
    stop = _StopFlag()
    with app.app_context():
        db.engine.dispose()
    last_reconcile = 0.0
    failing = False
    while not stop:
        with app.app_context():
            try:
                jobs.dispatch_due()
                if time.monotonic() - last_reconcile >= RECONCILE_EVERY:
                    last_reconcile = time.monotonic()
                    jobs.reconcile()
                if failing:
                    log.info("%s: dispatching again", name)
                failing = False
            except Exception:  # database or Redis away: say so once, keep trying
                if not failing:
                    log.exception("%s: cannot dispatch transfers; retrying every %.0f s", name, DISPATCH_EVERY)
                failing = True
            finally:
                db.session.remove()
        time.sleep(DISPATCH_EVERY)


def service_config(app):  # noqa: ANN001, ANN201
    from app.transfers import service

    with app.app_context():
        return service.ae_config()


def supervise(lanes: list[tuple[list[str], int]], *, cron: bool = True, gateway: bool = True,
              dispatcher: bool = True) -> None:
    """Start every worker, the cron, dispatcher and gateway processes, replace any that
    dies, stop all on SIGTERM."""
    stopping = False
    procs: dict[str, tuple[Process, Callable[..., None], tuple[object, ...]]] = {}
    host = os.uname().nodename

    def start(name: str, target: Callable[..., None], args: tuple[object, ...], what: str) -> None:
        proc = Process(target=_child, args=(target, args), name=name, daemon=False)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        procs[name] = (proc, target, args)
        log.info("started %s (%s, pid %s)", name, what, proc.pid)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _target, _args in procs.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)  # RQ: warm shutdown; cron: clean stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for lane_no, (queues, count) in enumerate(lanes):
        for n in range(count):
            name = f"{host}.{os.getpid()}.lane{lane_no}.{n}"
            start(name, run_worker, (queues, name), "worker on " + ",".join(queues))
    if cron:
        name = f"{host}.{os.getpid()}.cron"
        start(name, run_cron, (name,), "cron scheduler for the maintenance queue")
    if dispatcher:
        name = f"{host}.{os.getpid()}.dispatcher"
        start(name, run_dispatcher, (name,), "transfer dispatcher (the database is the scheduler)")
    if gateway:
        name = f"{host}.{os.getpid()}.gateway"
        start(name, run_gateway, (name,), "gateway Storage SCP")
    while not stopping:
        for name, (proc, target, args) in list(procs.items()):
            if not proc.is_alive() and not stopping:
                log.warning("%s exited with %s; replacing it", name, proc.exitcode)
                start(name, target, args, "replacement")
        time.sleep(1)
    for proc, _target, _args in procs.values():
        proc.join(timeout=60)


if __name__ == "__main__":
    # One handler, at the root, for every logger of the pool (RQ's, the desk's): its lines
    # once each, with values kept on one line (app.logs).
    root_handler = logging.StreamHandler()
    root_handler.setFormatter(SingleLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[root_handler])
    # pynetdicom logs several lines per instance at INFO (and patient details for C-FIND).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # WeasyPrint logs each step of every PDF it makes (a RIS sheet, a notice) at INFO.
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)
    try:
        lanes = parse_lanes(os.environ.get("IEP_WORKERS", DEFAULT_LANES))
    except ValueError as exc:  # before any process starts or any connection opens
        print(f"worker.py: IEP_WORKERS: {exc}", file=sys.stderr)
        sys.exit(2)
    supervise(
        lanes,
        cron=os.environ.get("IEP_CRON", "1").strip() not in {"0", "false", "no", "off"},
        gateway=os.environ.get("IEP_GATEWAY", "1").strip() not in {"0", "false", "no", "off"},
        dispatcher=os.environ.get("IEP_DISPATCHER", "1").strip() not in {"0", "false", "no", "off"},
    )
    sys.exit(0)
