"""Real DICOM peers for the tests: Orthanc and DCMTK's storescp/storescu.

Also `fake_scp`: a pynetdicom SCP whose handlers misbehave on request (statuses, aborts,
silences) for the error paths. Import the fixtures into a test module (`from tests.dicom_peers import orthanc, ...`).
Peers run from temporary directories on free ports and are talked to on 127.0.0.1 only
(Orthanc 1.10 and storescp listen on every interface; they cannot be told otherwise).
Both get TCP_NODELAY=1 in their environment (DCMTK reads it) and Orthanc gets
"SyncStorageArea": false — without those every instance waits ~40 ms for a delayed ACK
(shared/PITFALLS.md). A missing binary FAILS the test, never skips it: scripts/setup
installs the Debian packages `orthanc` and `dcmtk`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from app.dicom.ae import AEConfig, Node, Timeouts
from app.dicom.errors import DicomFailure
from app.dicom.scu import echo

ORTHANC_BINARY = "/usr/sbin/Orthanc"
OUR_AE = "IEPDESK"
QUICK = AEConfig(timeouts=Timeouts(connection=2, acse=5, dimse=10, network=30))
ROOT = Path(__file__).resolve().parent.parent
WORKER_GATEWAY_AET = "IEPGATEWAY"


def require_binary(path_or_name: str, package: str) -> str:
    """The binary's path, or fail the test saying which Debian package is missing."""
    if os.path.isabs(path_or_name):
        found = path_or_name if os.access(path_or_name, os.X_OK) else None
    else:
        found = shutil.which(path_or_name)
    if not found:
        pytest.fail(
            f"{path_or_name} is missing: install the Debian package `{package}` "
            "(scripts/setup does) — DICOM tests need a real peer and never skip"
        )
    return found


# Ports handed out in this run, one empty file each, shared by the suite's processes (named
# by the pytest process that runs the session: pytest-xdist's workers are its children):
# between free_port() and the peer's own bind the port is free, and another process asking
# then could be given it too (seen once, with a mail server: each test got the other's
# mail). Removed at the end of the run (conftest.pytest_sessionfinish).
_SESSION_PID = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
PORTS_TAKEN = Path(tempfile.gettempdir()) / f"iep-test-ports-{_SESSION_PID}"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on and that no other test of this run was given."""
    PORTS_TAKEN.mkdir(exist_ok=True)
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            (PORTS_TAKEN / str(port)).touch(exist_ok=False)
        except FileExistsError:
            continue  # given to another test of this run already
        return port
    raise AssertionError(f"no free port after 100 tries ({PORTS_TAKEN})")


def rss_kb() -> int:
    """Resident set size of this process (Linux /proc; no psutil in requirements)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def peer_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_for_echo(node: Node, proc: subprocess.Popen, log: Path, seconds: float = 20.0) -> None:
    """Until the peer answers a C-ECHO; fail with its log if it dies or stays silent."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{node} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            echo(node, config=QUICK)
            return
        except DicomFailure as exc:
            last = exc
            time.sleep(0.1)
    pytest.fail(f"{node} did not answer a C-ECHO within {seconds:g} s ({last}):\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- Orthanc --------------------------------------------------------------------------------


@dataclass
class OrthancPeer:
    node: Node
    http_port: int
    folder: Path
    proc: subprocess.Popen
    log: Path

    def rest(self, path: str) -> object:
        """GET a REST resource from 127.0.0.1 (urllib only)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])  # type: ignore[index]

    def sop_uids(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs Orthanc holds for a study, via /tools/lookup and /instances."""
        found = self.rest_post("/tools/lookup", study_uid)
        uids: set[str] = set()
        for hit in found:  # type: ignore[union-attr]
            if hit.get("Type") == "Study":
                for instance in self.rest(f"/studies/{hit['ID']}/instances"):  # type: ignore[union-attr]
                    uids.add(instance["MainDicomTags"]["SOPInstanceUID"])
        return uids

    def rest_post(self, path: str, body: str) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as rsp:  # noqa: S310 - an http:// URL to the local peer, built here
            return json.loads(rsp.read())


def start_orthanc(
    folder: Path,
    *,
    aet: str = "ORTHANC",
    check_called_aet: bool = True,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    extra: dict[str, object] | None = None,
    dicom_port: int | None = None,
    nodelay: bool = True,
) -> OrthancPeer:
    binary = require_binary(ORTHANC_BINARY, "orthanc")
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = free_port()
    while http_port == dicom_port:  # the kernel may hand the same free port out twice
        http_port = free_port()
    config = {
        "Name": "iep-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # HTTP from localhost only (there is no bind option)
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": check_called_aet,
        "DicomModalities": {name: list(entry) for name, entry in (modalities or {}).items()},
        "SyncStorageArea": False,
        "MaximumPduLength": 131072,
        "DicomAssociationCloseDelay": 0,
        "SaveJobs": False,
        "Plugins": [],
        "StorageCompression": False,
        **(extra or {}),
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, str(config_path)], cwd=folder,
            # nodelay=False: a deliberately slow peer (~40 ms an instance, delayed ACKs).
            env=peer_env() if nodelay else {k: v for k, v in peer_env().items() if k != "TCP_NODELAY"},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    peer = OrthancPeer(Node(aet, "127.0.0.1", dicom_port), http_port, folder, proc, log)
    try:
        wait_for_echo(peer.node, proc, log)
    except BaseException:
        _stop(proc)
        raise
    return peer


@pytest.fixture
def worker_gateway(app, database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Node]:  # noqa: ANN001
    """worker.py's own `run_gateway`, as the pool starts it, against the test's database
    (its files under tmp_path/data); stopped by SIGTERM at the end, which must exit 0."""
    from app.extensions import db

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "IEP_", "GATEWAY_"))}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, SECRET_KEY="gateway-test", PYTHONPATH=str(ROOT),
               GATEWAY_AE_TITLE=WORKER_GATEWAY_AET, GATEWAY_PORT=str(port), IEP_DATA_DIR=str(tmp_path / "data"))
    db.session.commit()
    log_file = tmp_path / "gateway.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", "import worker; worker.run_gateway('test-gateway')"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(WORKER_GATEWAY_AET, "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                echo(node, config=QUICK)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(log_file.read_text()) from None
                time.sleep(0.2)
        yield node
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_file.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """The port our GatewaySCP takes in C-MOVE tests (Orthanc must know it up front)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """start(**options) -> OrthancPeer; every Orthanc started is stopped at the end."""
    started: list[OrthancPeer] = []

    def start(**options: object) -> OrthancPeer:
        peer = start_orthanc(tmp_path_factory.mktemp("orthanc"), **options)  # type: ignore[arg-type]
        started.append(peer)
        return peer

    yield start
    # Orthanc takes about 3.5 s to shut down: ask them all at once, then wait for each.
    for peer in started:
        if peer.proc.poll() is None:
            peer.proc.send_signal(signal.SIGCONT)  # one a test froze would not hear SIGTERM
            peer.proc.terminate()
    for peer in started:
        _stop(peer.proc)


@pytest.fixture(scope="session")
def orthanc(orthanc_factory, gateway_port: int) -> OrthancPeer:
    """One Orthanc for the session: checks the called AE title; knows our AE title (for
    C-GET, and as a C-MOVE destination at 127.0.0.1:gateway_port)."""
    return orthanc_factory(modalities={"desk": (OUR_AE, "127.0.0.1", gateway_port)})


# -- a pynetdicom SCP that misbehaves on request ------------------------------------------------


@pytest.fixture
def fake_scp() -> Iterator[Callable[..., Node]]:
    """start(handlers, ae_title=..., require_calling=None, qr=False, max_pdu=16382,
    transfer_syntaxes=None) -> Node on 127.0.0.1: a pynetdicom SCP accepting every storage
    class in the uncompressed transfer syntaxes (or those given), whose handlers misbehave
    as a test needs."""
    servers = []

    def start(handlers, *, ae_title: str = "FAKESCP", require_calling: list[str] | None = None,
              qr: bool = False, max_pdu: int = 16382, transfer_syntaxes: list[str] | None = None) -> Node:
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = max_pdu
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:  # pynetdicom's default: the four uncompressed
            ae.add_supported_context(cx.abstract_syntax, transfer_syntaxes, scu_role=True, scp_role=True)
        if qr:
            for model in (StudyRootQueryRetrieveInformationModelFind,
                          StudyRootQueryRetrieveInformationModelGet,
                          StudyRootQueryRetrieveInformationModelMove):
                ae.add_supported_context(model)
        if require_calling:
            ae.require_calling_aet = require_calling
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        servers.append(server)
        return Node(ae_title, "127.0.0.1", server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()


# -- DCMTK ----------------------------------------------------------------------------------


@dataclass
class StoreSCP:
    node: Node
    folder: Path
    proc: subprocess.Popen
    log: Path
    received: Path = field(init=False)

    def __post_init__(self) -> None:
        self.received = self.folder / "received"

    def files(self) -> list[Path]:
        return sorted(p for p in self.received.rglob("*") if p.is_file())


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """DCMTK storescp writing what it receives, bit-preserving, into a temp dir."""
    binary = require_binary("storescp", "dcmtk")
    folder = tmp_path / "storescp"
    (folder / "received").mkdir(parents=True)
    port = free_port()
    log = folder / "storescp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--aetitle", "STORESCP", "--output-directory", str(folder / "received"),
             "--max-pdu", "131072", "--bit-preserving", str(port)],
            env=peer_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    peer = StoreSCP(Node("STORESCP", "127.0.0.1", port), folder, proc, log)
    try:
        wait_for_echo(peer.node, proc, log)
        yield peer
    finally:
        _stop(proc)


def run_storescu(node: Node, paths: Sequence[Path], *, calling_ae: str = "DCMTKSCU",
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """DCMTK storescu pushing files to `node` (one association)."""
    binary = require_binary("storescu", "dcmtk")
    return subprocess.run(
        [binary, "--aetitle", calling_ae, "--call", node.ae_title, "--max-pdu", "131072",
         "--no-halt", node.host, str(node.port), *map(str, paths)],
        env=peer_env(), capture_output=True, text=True, timeout=timeout,
    )
