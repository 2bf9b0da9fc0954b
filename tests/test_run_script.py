"""`make run` stops everything it started on Ctrl+C or SIGTERM (issue 13.13).

scripts/run is started as a person starts it — from a copy of the repository whose
instance folder is empty, with DATABASE_URL and REDIS_URL unset, so it migrates a fresh
SQLite file, starts its embedded Redis, the worker pool and the demo DICOM nodes, seeds
the demo and serves the site. Every port is a free one (IEP_PORT, the gateway's, the demo
nodes'), so it never meets the desk another session runs. Once the site answers, the
test sends the signal: Ctrl+C as a terminal sends it (to the whole foreground process
group), SIGTERM as `kill` does (to the script alone). Then the script must exit, every
process it started must be gone, and so must the Redis server of its instance folder.

Only processes of this run are ever looked at or cleaned up: the script's descendants
and Redis servers whose working directory is this run's instance folder — never a
process found by its name alone, never the shared Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.dicom_peers import free_port

ROOT = Path(__file__).resolve().parent.parent
# What scripts/run needs of the repository; the virtual environment is linked, not copied
# (scripts/setup finds it up to date and installs nothing).
NEEDED = ("app", "migrations", "scripts", "worker.py", "wsgi.py", "requirements.txt", "pyproject.toml")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository with an empty instance folder."""
    copy = tmp_path / "desk"
    copy.mkdir()
    for name in NEEDED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to((ROOT / ".venv").resolve())
    return copy


def redis_servers_of(instance: Path) -> list[psutil.Process]:
    """Live Redis servers working in `instance` (the embedded server chdirs to its folder)."""
    found = []
    for proc in psutil.process_iter(["name", "cwd", "status"]):
        cwd = proc.info.get("cwd")
        if (proc.info.get("name") or "").startswith("redis-server") and cwd and Path(cwd).is_relative_to(instance) \
                and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def shared_redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running: a process may end (or be a zombie) between two looks at it."""
    living = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                living.append(p)
        except psutil.NoSuchProcess:
            pass
    return living


def command_of(p: psutil.Process) -> str:
    """Its command line, or "" for one that ended while the tree was being read."""
    try:
        return " ".join(p.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess included
        return ""


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    port: int
    instance: Path
    log: Path
    seen: list[psutil.Process] = field(default_factory=list)  # every process of the run's tree met so far

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def wait_until_serving(self, seconds: float = 240) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"scripts/run exited with {self.proc.returncode} before serving:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/login", timeout=2) as response:  # noqa: S310 - our own loopback URL
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"scripts/run did not serve on {self.port} within {seconds} s:\n{self.output()}")

    def tree(self) -> list[psutil.Process]:
        """The script and every process under it (the pool's workers, the demo nodes, the site)."""
        root = psutil.Process(self.proc.pid)
        procs = alive([root, *root.children(recursive=True)])  # a short-lived helper may have just ended
        self.seen.extend(p for p in procs if p not in self.seen)
        return procs


@pytest.fixture
def run(checkout: Path, tmp_path: Path) -> Iterator[Run]:
    """scripts/run from the copy, on free ports, in a process group of its own (as a shell
    starts a foreground job); whatever of this run is left at the end is killed by pid."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "IEP_ENV")}
    port = free_port()
    env.update(IEP_PORT=str(port), GATEWAY_PORT=str(free_port()), DEMO_PACS_PORT=str(free_port()),
               DEMO_REMOTE_PORT=str(free_port()),
               # Two workers rather than ten: the machine is shared; the stop is the same.
               IEP_WORKERS="outbound-bluelight,outbound,outbound-batch=1;inbound-bluelight,inbound,maintenance=1")
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(checkout / "scripts" / "run")], cwd=checkout, env=env, stdout=out,  # noqa: S603 - our script
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    started = Run(proc, port, checkout / "instance", log)
    try:
        yield started
    finally:
        if proc.poll() is None:
            started.tree()
        leftovers = alive(started.seen) + redis_servers_of(started.instance)
        for leftover in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("signum", "to_group", "status"), [
    pytest.param(signal.SIGINT, True, 130, id="ctrl_c_to_the_foreground_group"),
    pytest.param(signal.SIGTERM, False, 143, id="sigterm_to_the_script"),
])
def test_run_stops_the_site_the_pool_the_demo_nodes_and_the_embedded_redis(run: Run, signum, to_group, status):
    shared_before = shared_redis_answers()
    run.wait_until_serving()
    tree = run.tree()
    commands = [command_of(p) for p in tree]
    assert any("worker.py" in c for c in commands), commands
    assert any("demo_nodes.py" in c for c in commands), commands
    assert any(" run --host 127.0.0.1" in c for c in commands), commands
    assert len(tree) >= 8, commands  # the script, the site, the demo nodes, the pool and its workers
    redis = redis_servers_of(run.instance)
    assert len(redis) == 1, "the run's embedded Redis should be running in its instance folder"
    out = run.output()
    assert "Demo PAS patients" in out and "S1000006  山田, 花子" in out, out  # the seed's table, in UTF-8

    if to_group:
        os.killpg(run.proc.pid, signum)  # a terminal's Ctrl+C: the whole foreground process group
    else:
        os.kill(run.proc.pid, signum)
    try:
        code = run.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"scripts/run did not stop within 120 s of {signum.name}:\n{run.output()}")
    assert code == status, run.output()
    _gone, left = psutil.wait_procs(tree, timeout=10)
    assert alive(left) == [], [command_of(p) for p in alive(left)]
    assert redis_servers_of(run.instance) == [], "the embedded Redis outlived scripts/run"
    assert not (run.instance / "redis" / "redis.sock").exists()
    assert "run: embedded Redis stopped" in run.output()
    # Nothing else was touched: the shared Redis answers as it did before.
    assert shared_redis_answers() == shared_before
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{run.port}/login", timeout=2)  # noqa: S310 - our own loopback URL
