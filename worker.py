"""The worker pool: RQ workers per lane, from configuration (DESIGN "Transfers").

    python worker.py            # the default pool
    IEP_WORKERS="outbound-bluelight=1;outbound-bluelight,outbound,outbound-batch=4;..." python worker.py

Each lane is a set of queues in priority order and a worker count. The supervisor
starts one process per worker, replaces any that dies, and on SIGTERM/SIGINT asks every
worker for a warm shutdown (finish the job in hand), then exits.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from multiprocessing import Process

from app import create_app
from app.extensions import db

log = logging.getLogger("iep.worker")

DEFAULT_LANES = (
    "outbound-bluelight=1;"
    "outbound-bluelight,outbound,outbound-batch=4;"
    "inbound-bluelight,inbound=4;"
    "maintenance=1"
)


def parse_lanes(spec: str) -> list[tuple[list[str], int]]:
    """`"a,b=2;c=1"` -> `[(["a", "b"], 2), (["c"], 1)]`; raises ValueError when malformed."""
    lanes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        queues, _, count = part.rpartition("=")
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names or not count.strip().isdigit():
            raise ValueError(f"malformed lane {part!r}: expected 'queue,queue=count'")
        lanes.append((names, int(count)))
    return lanes


def run_worker(queues: list[str], name: str) -> None:
    """One RQ worker process: its own app, its own database and Redis connections."""
    from rq import Queue, Worker

    from app.extensions import redis_conn

    app = create_app()
    with app.app_context():
        db.engine.dispose()  # never share a pooled connection across fork()
        conn = redis_conn()
        worker = Worker([Queue(q, connection=conn) for q in queues], connection=conn, name=name)
        worker.work(with_scheduler=("maintenance" in queues), logging_level="INFO")


def supervise(lanes: list[tuple[list[str], int]]) -> None:
    """Start every worker, replace the ones that die, stop them all on SIGTERM."""
    stopping = False
    procs: dict[str, tuple[Process, list[str]]] = {}
    host = os.uname().nodename

    def start(name: str, queues: list[str]) -> None:
        proc = Process(target=run_worker, args=(queues, name), name=name, daemon=False)
        proc.start()
        procs[name] = (proc, queues)
        log.info("started %s on %s (pid %s)", name, ",".join(queues), proc.pid)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc, _queues in procs.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)  # RQ: warm shutdown

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for lane_no, (queues, count) in enumerate(lanes):
        for n in range(count):
            start(f"{host}.{os.getpid()}.lane{lane_no}.{n}", queues)
    while not stopping:
        for name, (proc, queues) in list(procs.items()):
            if not proc.is_alive() and not stopping:
                log.warning("%s exited with %s; replacing it", name, proc.exitcode)
                start(name, queues)
        time.sleep(1)
    for proc, _queues in procs.values():
        proc.join(timeout=60)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    supervise(parse_lanes(os.environ.get("IEP_WORKERS", DEFAULT_LANES)))
    sys.exit(0)
