"""The RQ queues: their names, the one way to build one, and the context a job runs in.

Guideline 2.3 d: five transfer lanes (outbound, one of them for Blue Light only, and
inbound), and the `maintenance` queue for the periodic and housekeeping jobs (outbox,
auto-cancel, watchdog, purges). `worker.py` decides how many workers listen to which and
refuses a name not listed here; `app/transfers/lanes.py` says which lane a transfer takes.
The periodic jobs themselves are listed in `app/schedule.py`, which imports the areas
whose jobs they are (this module imports none, so every area may import it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app, has_app_context
from rq import Queue

from app.extensions import db, redis_conn

OUTBOUND_BLUELIGHT = "outbound-bluelight"
OUTBOUND = "outbound"
OUTBOUND_BATCH = "outbound-batch"
INBOUND_BLUELIGHT = "inbound-bluelight"
INBOUND = "inbound"
MAINTENANCE = "maintenance"

TRANSFER_LANES = (OUTBOUND_BLUELIGHT, OUTBOUND, OUTBOUND_BATCH, INBOUND_BLUELIGHT, INBOUND)
QUEUES = (*TRANSFER_LANES, MAINTENANCE)


def queue(name: str) -> Queue:
    """The RQ queue `name` on the app's Redis; raises ValueError for a name not in QUEUES."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r} (known: {', '.join(QUEUES)})")
    return Queue(name, connection=redis_conn())


# --- the job context ----------------------------------------------------------------------

_standalone: Flask | None = None
_engine_pid: dict[int, int] = {}


def _standalone_app() -> Flask:
    """The app for a job run outside `worker.py` (e.g. `rq worker`), made once per process."""
    global _standalone
    if _standalone is None:
        from app import create_app

        _standalone = create_app()
    return _standalone


def _fresh_pool_after_fork() -> None:
    # STYLE habit 4 / PITFALLS "RQ": a forked process must not reuse its parent's pooled
    # connections. dispose(close=False) drops the inherited pool without closing the
    # parent's sockets (SQLAlchemy "Using Connection Pools with Multiprocessing").
    engine = db.engine
    pid = os.getpid()
    seen = _engine_pid.setdefault(id(engine), pid)
    if seen != pid:
        engine.dispose(close=False)
        _engine_pid[id(engine)] = pid


def job_label() -> str:
    """`job <id>` of the RQ job running now, for log lines (STYLE habit 4)."""
    from rq import get_current_job

    job = get_current_job()
    return f"job {job.id}" if job is not None else "job -"


@contextmanager
def job_context() -> Iterator[Flask]:
    """An app context of the job's own: a database session of its own, removed at the end.

    Inside `worker.py` (or a test) the current app is reused; elsewhere one is created.
    A fresh context is pushed even when one exists, so a job never shares the session of
    whoever runs it (an in-process `SimpleWorker` in a test, say).
    """
    # _get_current_object: current_app is a LocalProxy typed as Flask, which has no such method.
    app = current_app._get_current_object() if has_app_context() else _standalone_app()  # type: ignore[attr-defined]  # see above
    with app.app_context():
        _fresh_pool_after_fork()
        yield app
