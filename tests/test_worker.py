"""The worker pool's configuration: IEP_WORKERS names only queues that exist (issue 9.4).

A misspelt lane would start a worker that waits for ever on a queue nothing is put on,
while the real lane's transfers pile up: the pool refuses to start instead, and says
which name it does not know.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.queues import QUEUES
from worker import DEFAULT_LANES, parse_lanes

ROOT = Path(__file__).resolve().parent.parent


def test_default_lanes_name_only_known_queues():
    lanes = parse_lanes(DEFAULT_LANES)
    assert {q for queues, _count in lanes for q in queues} == set(QUEUES)


@pytest.mark.parametrize(
    ("spec", "unknown"),
    [
        pytest.param("outbund=1", "outbund", id="misspelt_lane"),
        pytest.param("outbound-bluelight=1;inbound,inbond=2", "inbond", id="one_bad_name_in_a_later_lane"),
    ],
)
def test_parse_lanes_refuses_an_unknown_queue_and_names_it(spec, unknown):
    with pytest.raises(ValueError) as refused:
        parse_lanes(spec)
    message = str(refused.value)
    assert repr(unknown) in message
    assert all(name in message for name in QUEUES)  # and says which names it knows


def test_worker_refuses_to_start_on_an_unknown_lane(tmp_path):
    """It fails before connecting: the database and Redis named here do not exist."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEP_", "SMTP_"))}
    env.update(
        IEP_WORKERS="nonsense=1",
        DATABASE_URL=f"sqlite:///{tmp_path / 'absent' / 'none.sqlite3'}",
        REDIS_URL="redis://127.0.0.1:1/0",
        SECRET_KEY="worker-test-secret",
        PYTHONPATH=str(ROOT),
    )
    result = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "unknown queue 'nonsense'" in result.stderr
    assert "maintenance" in result.stderr
    assert "started" not in result.stderr + result.stdout
