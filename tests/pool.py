"""The worker pool as a deployment runs it (`worker.py` in its own processes), for tests
that prove what a user relies on through the real pool: start it, signal it, wait for the
database to say something."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.extensions import db

REPO = Path(__file__).resolve().parent.parent
# IEP_POOL_LOG=path keeps every pool's output there too (for reading a failure).
POOL_LOG = open(os.environ.get("IEP_POOL_LOG", os.devnull), "ab")  # noqa: SIM115 - kept for the run
_OUTPUT: dict[int, Path] = {}  # a running pool's pid -> the file its output goes to
STALL = 3  # seconds without progress before a run counts as dead (short for the test)


def start_pool(app, database_url: str, redis_url: str, lanes: str, **extra_env: str) -> subprocess.Popen:
    """worker.py as a deployment runs it (its dispatcher included), against the test's
    database and Redis; without cron and gateway, which these tests do not need."""
    settings = app.config["IEP_SETTINGS"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "fault-test",
        "IEP_DATA_DIR": str(settings.storage_root),
        "IEP_WORKERS": lanes,
        "IEP_CRON": "0",
        "IEP_GATEWAY": "0",
        "TRANSFER_STALL_SECONDS": str(STALL),
        "DICOM_TIMEOUT_SECONDS": "10",
        "GATEWAY_AE_TITLE": settings.gateway_ae_title,
        **extra_env,
    }
    output = Path(settings.storage_root) / f"pool-{time.monotonic_ns()}.log"
    with output.open("ab") as sink:
        pool = subprocess.Popen([sys.executable, "worker.py"], cwd=REPO, env=env, start_new_session=True,
                                stdout=sink, stderr=subprocess.STDOUT)
    _OUTPUT[pool.pid] = output
    return pool


def _check_output(pool: subprocess.Popen) -> None:
    """Issue 11.6 in the worker processes: nothing the pool wrote (its log lines, RQ's
    messages about failed jobs, tracebacks) holds a PAS patient's value."""
    from tests.conftest import PAS_PATIENT_VALUES

    output = _OUTPUT.pop(pool.pid, None)
    if output is None:
        return
    text = output.read_bytes()
    POOL_LOG.write(text)
    POOL_LOG.flush()
    leaked = [value for value in PAS_PATIENT_VALUES if value.encode() in text]
    assert not leaked, f"the worker pool logged patient values {leaked} (its output: {output})"
    twice = _printed_twice(text.decode("utf-8", "replace").splitlines())
    assert not twice, f"the worker pool printed log lines twice, e.g. {twice[:2]} (its output: {output})"


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _printed_twice(lines: list[str]) -> list[str]:
    """Log records that came out twice in a row, whatever the two handlers' formats (a
    logger's own handler and the root's): the same moment, logger and message."""

    def record(line: str) -> tuple[str, ...] | None:
        words = line.split(" ")
        if len(words) < 4:
            return None
        moment, rest = words[:2], words[2:]
        if rest[0] in _LEVELS:
            rest = rest[1:]
        return (*moment, rest[0].rstrip(":"), " ".join(rest[1:])) if rest else None

    shown = [record(line) for line in lines]
    return [line for line, a, b in zip(lines[1:], shown, shown[1:], strict=False) if a is not None and a == b]


def kill_pool(pool: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the supervisor and every descendant (RQ's work-horses run in sessions of
    their own, so the process group alone would miss the one doing the transfer)."""
    import psutil

    try:
        family = [psutil.Process(pool.pid), *psutil.Process(pool.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    try:
        pool.wait(timeout=120)  # a warm shutdown lets a job in hand finish
    except subprocess.TimeoutExpired:
        # Say which process would not stop (the next person needs to know), then clean up.
        alive = [f"{p.pid} {' '.join(p.cmdline()[-3:])}" for p in family if p.is_running()]
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        pool.wait(timeout=30)
        raise AssertionError(f"the pool did not stop on signal {sig} within 120 s; still running: {alive}") from None
    if sig == signal.SIGKILL:
        psutil.wait_procs(family, timeout=10)
    _check_output(pool)


def wait_for(predicate, seconds: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        db.session.expire_all()
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


