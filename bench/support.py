"""What every benchmark here needs: a free loopback port, a log's last lines, a process's
peak RSS, stopping what a bench started, an Orthanc of its own. Imported as
`bench.support` (each bench puts the repository on sys.path)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def reset_peak(pid: int | str = "self") -> None:
    """Reset a process's VmHWM to its present RSS (Linux >= 4.0: "5" into clear_refs), so
    that the peak read later is that of what it did since, not of its start-up (importing
    the app peaks above what a receive costs). OSError if the kernel does not allow it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def vm_hwm(pid: int | str) -> int:
    """The kernel's peak RSS of a process (VmHWM), in bytes; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def stop_process(proc: subprocess.Popen | None, wait: float = 30) -> None:
    """SIGTERM a process we started, by its pid; SIGKILL it if it is not gone in `wait` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def stop_family(proc: subprocess.Popen | None, wait: float = 60) -> None:
    """Stop a process and every descendant it started (a `worker.py` pool: its supervisor,
    workers, RQ work-horses in sessions of their own, the gateway), each by its pid: the
    supervisor is asked first (SIGTERM: a warm shutdown), whatever is left after `wait`
    seconds is killed."""
    import psutil

    if proc is None:
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    stop_process(proc, wait)
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(family, timeout=10)


def wait_for_echo(ae_title: str, port: int, proc: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    """Until the peer at 127.0.0.1:`port` answers a C-ECHO; RuntimeError with its log's
    last lines if it exits or stays silent."""
    from app.dicom.ae import AEConfig, Node, Timeouts
    from app.dicom.errors import DicomFailure
    from app.dicom.scu import echo

    quick = AEConfig(ae_title="BENCH", timeouts=Timeouts(connection=2, acse=5, dimse=10, network=30))
    deadline = time.monotonic() + seconds
    while True:
        try:
            echo(Node(ae_title, "127.0.0.1", port), config=quick)
            return
        except DicomFailure:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{ae_title} on port {port} did not answer a C-ECHO within {seconds:g} s:\n"
                                   f"{tail(log)}") from None
            time.sleep(0.1)


@dataclass
class Orthanc:
    """An Orthanc of the bench's own (scratch storage and configuration), and its REST API."""

    ae_title: str
    port: int
    http_port: int
    proc: subprocess.Popen
    log: Path

    def rest(self, method: str, path: str, body: bytes | None = None) -> Any:  # noqa: ANN401 - JSON
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - http:// to our own peer
            text = answer.read()
        return json.loads(text) if text.strip() else None

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with that Study Instance UID, or None if it holds none."""
        hits = self.rest("POST", "/tools/lookup", study_uid.encode())
        return next((hit["ID"] for hit in hits if hit.get("Type") == "Study"), None)

    def count(self, study_uid: str) -> int:
        """Instances of the study Orthanc holds (REST /studies/<id>/instances)."""
        found = self.study_id(study_uid)
        return 0 if found is None else len(self.rest("GET", f"/studies/{found}/instances"))

    def delete(self, study_uid: str) -> None:
        found = self.study_id(study_uid)
        if found is not None:
            self.rest("DELETE", f"/studies/{found}")


ORTHANC_BINARY = "/usr/sbin/Orthanc"


def start_orthanc(folder: Path, ae_title: str, modalities: dict[str, tuple[str, str, int]]) -> Orthanc:
    """An Orthanc on free loopback ports with its storage and configuration in `folder`,
    tuned as tests/dicom_peers.py tunes it (TCP_NODELAY=1, no synchronous storage, 128 KB
    PDU, no compression); `modalities`: the AEs it knows (C-GET, C-FIND and C-MOVE
    destinations need to be known). RuntimeError if it does not answer a C-ECHO."""
    folder.mkdir(parents=True)
    port = free_port()
    http_port = free_port()
    while http_port == port:
        http_port = free_port()
    config = {
        "Name": f"bench-{ae_title.lower()}", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"), "DicomAet": ae_title, "DicomPort": port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()}, "SyncStorageArea": False,
        "MaximumPduLength": 131072, "DicomAssociationCloseDelay": 0, "SaveJobs": False, "Plugins": [],
        "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ORTHANC_BINARY, str(folder / "orthanc.json")], cwd=folder,
                                env={**os.environ, "TCP_NODELAY": "1"}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for_echo(ae_title, port, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Orthanc(ae_title, port, http_port, proc, log)
